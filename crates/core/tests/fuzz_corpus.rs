//! Every input of the committed fuzz corpus (`fuzz/corpus/<target>/`), and every input a fuzzer
//! once crashed on (`fuzz/regressions/<target>/`, kept after the fix), run through the same
//! property the `cargo fuzz` target checks, on the stable toolchain.

use std::path::{Path, PathBuf};

use chatrun_core::testkit::fuzz_checks;

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        files.extend(dir.map(|entry| entry.expect("a corpus entry").path()));
    }
    files.sort();
    files
}

fn run(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for {target}");
    for file in &files {
        let data = std::fs::read(file).expect("a corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target} fails on {}", file.display());
    }
    println!("{target}: {} inputs", files.len());
}

#[test]
fn the_client_frame_corpus_holds() {
    run("client_frame", fuzz_checks::client_frame);
}

#[test]
fn the_ui_message_corpus_holds() {
    run("ui_message", fuzz_checks::ui_message);
}

#[test]
fn the_chunk_stream_corpus_holds() {
    run("chunk_stream", fuzz_checks::chunk_stream);
}

#[test]
fn the_turn_chunks_corpus_holds() {
    run("turn_chunks", fuzz_checks::turn_chunks);
}
