# The two commands of the README: `make run` and `make test`.
.PHONY: run test bench

run:
	bash scripts/run.sh

test:
	bash scripts/test.sh

# The figures of BENCHMARKS.md (release build; takes several minutes).
bench:
	bash bench/run.sh $(BENCH_ARGS)
