//! Replays every committed corpus file (`fuzz/corpus/<target>/*`) and every regression input
//! (`fuzzing/regressions/<target>/*`) through the same target bodies cargo-fuzz runs, on the
//! stable toolchain: a crash the fuzzer once found stays fixed, and the seeds stay valid.

use std::path::{Path, PathBuf};

use shadowmesh_fuzzing::targets::{by_name, TARGETS};

fn replay_dir(dir: &Path) -> usize {
    let mut n = 0;
    let Ok(targets) = std::fs::read_dir(dir) else {
        return 0;
    };
    for t in targets.flatten().filter(|t| t.path().is_dir()) {
        let name = t.file_name().to_string_lossy().into_owned();
        let Some(target) = by_name(&name) else {
            panic!("{}: no target called {name}", t.path().display());
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(t.path())
            .expect("read target dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f).expect("read corpus file");
            eprintln!("replay {}", f.display());
            target(&bytes);
            n += 1;
        }
    }
    n
}

#[test]
fn corpus_replays_without_a_crash() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("../fuzz/corpus");
    for (name, _) in TARGETS {
        let dir = corpus.join(name);
        let seeds = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (run gen_corpus)", dir.display()))
            .count();
        assert!(seeds > 0, "{}: empty corpus", dir.display());
    }
    let n = replay_dir(&corpus);
    assert!(n >= TARGETS.len());
}

#[test]
fn regressions_replay_without_a_crash() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    replay_dir(&root.join("regressions"));
}
