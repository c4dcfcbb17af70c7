//! Replays, without libFuzzer, every fuzz target's seeds and every input
//! kept in `fuzz/regressions/<target>/` (what the fuzzers found, fixed).
//! `make fuzz` runs the fuzzers themselves.

use std::path::{Path, PathBuf};

use raftkv::fuzzing::TARGETS;

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions")
}

#[test]
fn every_target_takes_its_seeds() {
    for t in TARGETS {
        let seeds = (t.seeds)();
        assert!(!seeds.is_empty(), "{} has no seeds", t.name);
        for (i, seed) in seeds.iter().enumerate() {
            eprintln!("{} seed {i} ({} bytes)", t.name, seed.len());
            (t.run)(seed);
        }
    }
}

#[test]
fn every_kept_input_passes() {
    let dir = regressions_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for name in &names {
        assert!(TARGETS.iter().any(|t| t.name == *name), "fuzz/regressions/{name} names no fuzz target");
    }
    for t in TARGETS {
        let Ok(entries) = std::fs::read_dir(dir.join(t.name)) else { continue };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let input = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            eprintln!("{} {}", t.name, f.display());
            (t.run)(&input);
        }
    }
}

/// The fuzz targets' seeds written as files, for `make fuzz` to start
/// from: `RAFTKV_FUZZ_SEEDS=DIR cargo test -p raftkv --test fuzz_regressions -- --ignored`.
#[test]
#[ignore = "writes the seeds for make fuzz"]
fn write_seeds() {
    let Some(out) = std::env::var_os("RAFTKV_FUZZ_SEEDS") else { panic!("RAFTKV_FUZZ_SEEDS names no directory") };
    for t in TARGETS {
        let dir = Path::new(&out).join(t.name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for (i, seed) in (t.seeds)().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
    }
}
