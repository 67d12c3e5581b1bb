# The commands of the README: `make run` and `make test`; `make deploy` and `make destroy` for
# AWS (infra/README.md).
.PHONY: run test deploy destroy bench fuzz

run:
	bash scripts/run.sh

test:
	bash scripts/test.sh

deploy:
	bash infra/scripts/deploy.sh

destroy:
	bash infra/scripts/destroy.sh

# The figures of BENCHMARKS.md (release build; takes several minutes).
bench:
	bash bench/run.sh $(BENCH_ARGS)

# The fuzz targets (nightly; installs cargo-fuzz when missing): FUZZ_SECS seconds each.
fuzz:
	bash scripts/fuzz.sh
