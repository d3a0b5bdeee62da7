//! Writes the seed corpus: `fuzz/corpus/<target>/seed-*` for every target, from real inputs
//! built by the project's own encoders (see `shadowmesh_fuzzing::seeds`). Files the fuzzer
//! found (any name not starting with `seed-`) are left alone.
//!
//! `cargo run -p shadowmesh-fuzzing --example gen_corpus` — re-run after a format change.
//! `... -- --new-keys` first makes a new fixture network in `fuzzing/fixtures/` (then run it
//! once more without the flag, so the seeds are built with the new, compiled-in keys).

use std::path::PathBuf;

fn main() -> Result<(), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if std::env::args().any(|a| a == "--new-keys") {
        shadowmesh_fuzzing::fixtures::generate(&root.join("fixtures"))?;
        println!(
            "wrote new fixtures to {}; run again without --new-keys",
            root.join("fixtures").display()
        );
        return Ok(());
    }
    let corpus = root.join("../fuzz/corpus");
    let seeds = shadowmesh_fuzzing::seeds::all();
    for (target, _) in shadowmesh_fuzzing::targets::TARGETS {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Old seeds go, so a renamed or dropped seed does not linger.
        for entry in std::fs::read_dir(&dir)
            .map_err(|e| e.to_string())?
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(entry.path()).map_err(|e| e.to_string())?;
            }
        }
    }
    for (target, name, bytes) in &seeds {
        let path = corpus.join(target).join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("wrote {} seeds under {}", seeds.len(), corpus.display());
    Ok(())
}
