//! The fuzz targets' checks (`fuzz/src/lib.rs`) over every committed input:
//! the corpora the fuzzers grew (`fuzz/corpus/<target>/`) and each input
//! that once made a target fail (`fuzz/regressions/<target>/`). `make fuzz`
//! runs the fuzzers themselves; this keeps what they found in `make test`.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::Path;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<_> = entries.map(|e| e.expect("a corpus entry").path()).collect();
    files.sort();
    files.into_iter().map(|f| (f.display().to_string(), std::fs::read(&f).expect("a corpus file"))).collect()
}

#[test]
fn every_committed_fuzz_input_passes_its_targets_checks() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (target, check) in harness::TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(target));
        assert!(corpus.len() >= 3, "{target}: the committed corpus is missing");
        for (file, bytes) in corpus.iter().chain(&inputs(&fuzz.join("regressions").join(target))) {
            if std::panic::catch_unwind(|| check(bytes)).is_err() {
                panic!("{target}: {file} fails the target's checks (see the panic above)");
            }
        }
    }
}
