//! The set-up script's checks (`scripts/deps.sh`), on prepared directories
//! and fake tools: a prerequisite counts as found only when it is what the
//! build really uses.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DEPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/deps.sh");

fn deps(args: &[&str], path: Option<&Path>) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(DEPS).args(args);
    if let Some(dir) = path {
        // Only the fake tools, and what bash itself needs to run the script.
        cmd.env("PATH", format!("{}:/usr/bin:/bin", dir.display()));
    }
    cmd.output().expect("bash runs scripts/deps.sh")
}

/// `--find-libclang` over one directory holding `files`: the library it
/// names, or None when it finds none.
fn libclang_in(files: &[&str]) -> Option<PathBuf> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for f in files {
        std::fs::write(dir.path().join(f), b"").expect("a file in the temporary directory");
    }
    let out = deps(&["--find-libclang", dir.path().to_str().expect("a UTF-8 path")], None);
    match out.status.code() {
        Some(0) => Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())),
        Some(1) => {
            assert!(out.stdout.is_empty(), "a miss printed {:?}", String::from_utf8_lossy(&out.stdout));
            None
        }
        other => panic!("deps.sh --find-libclang exited {other:?}: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

fn file_name(p: Option<PathBuf>) -> Option<String> {
    p.and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

#[test]
fn libclang_cpp_alone_is_not_libclang() {
    assert_eq!(libclang_in(&["libclang-cpp.so.14"]), None);
    assert_eq!(libclang_in(&["libclang-cpp.so", "libclangBasic.a", "libclang.a"]), None);
    assert_eq!(libclang_in(&[]), None);
}

#[test]
fn libclang_is_found_under_each_name_clang_sys_loads() {
    for name in ["libclang.so", "libclang-14.so", "libclang.so.1", "libclang-14.so.1", "libclang.so.14.0.6"] {
        assert_eq!(file_name(libclang_in(&["libclang-cpp.so.14", name])), Some(name.to_owned()), "{name}");
    }
}

/// A fake command `name` in `dir` that prints `output`.
fn fake_tool(dir: &Path, name: &str, output: &str) {
    fake_script(dir, name, &format!("cat <<'OUT'\n{output}\nOUT"));
}

/// A fake command `name` in `dir` running the shell `body`.
fn fake_script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write a fake tool");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("make it executable");
}

fn doctor_line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no line for {name} in:\n{report}"))
}

#[test]
fn doctor_holds_etcd_to_its_minimum_version_and_names_the_package() {
    let bin = tempfile::tempdir().expect("a temporary directory");
    fake_tool(bin.path(), "etcd", "etcd Version: 3.3.27\nGit SHA: Not provided\nGo Version: go1.20");
    fake_tool(bin.path(), "etcdctl", "etcdctl version: 3.5.17\nAPI version: 3.5");
    fake_tool(bin.path(), "protoc", "libprotoc 3.21.12");
    let out = deps(&["--doctor"], Some(bin.path()));
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a missing prerequisite fails the doctor:\n{report}");
    let etcd = doctor_line(&report, "etcd");
    assert!(etcd.contains("MISSING") && etcd.contains("etcd-server"), "etcd 3.3 is too old: {etcd}");
    let etcdctl = doctor_line(&report, "etcdctl");
    assert!(etcdctl.contains("found") && etcdctl.contains("3.5.17"), "{etcdctl}");
    let protoc = doctor_line(&report, "protoc");
    assert!(protoc.contains("found") && protoc.contains("3.21.12"), "{protoc}");
}

/// protoc alone cannot build the etcd protos: they import the well-known
/// types (google/protobuf/descriptor.proto), which Debian ships apart.
#[test]
fn doctor_wants_protoc_with_the_well_known_types() {
    let bin = tempfile::tempdir().expect("a temporary directory");
    fake_script(
        bin.path(),
        "protoc",
        "case \"$1\" in --version) echo 'libprotoc 3.21.12' ;; \
         *) echo 'google/protobuf/descriptor.proto: File not found.' >&2; exit 1 ;; esac",
    );
    let out = deps(&["--doctor"], Some(bin.path()));
    let report = String::from_utf8_lossy(&out.stdout);
    let protoc = doctor_line(&report, "protoc");
    assert!(protoc.contains("MISSING") && protoc.contains("libprotobuf-dev"), "{protoc}");
}

#[test]
fn doctor_reports_every_prerequisite_once() {
    let out = deps(&["--doctor"], None);
    let report = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = report.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, ["cargo", "libclang", "protoc", "etcd", "etcdctl", "python", "iproute", "unshare", "faketime", "node", "curl", "go"], "{report}");
    for line in report.lines() {
        assert!(line.contains(" found ") || line.contains(" MISSING "), "{line}");
    }
}
