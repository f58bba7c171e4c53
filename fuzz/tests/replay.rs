//! The seed corpus and the regressions of the targets that need no setup, replayed through
//! the target functions: a crash that comes back fails `cargo test`.

use wisp_fuzz::corpus;

fn replay(target: &str, run: impl Fn(&[u8])) {
    let inputs = corpus::inputs(target);
    assert!(!inputs.is_empty(), "no seeds for {target}: run `cargo run -p wisp-fuzz --bin wisp-fuzz-seeds`");
    for (path, data) in inputs {
        eprintln!("{target}: {}", path.display());
        run(&data);
    }
}

#[test]
fn oci_from_pb() {
    replay("oci_from_pb", wisp_fuzz::oci::from_pb);
}

#[test]
fn oci_to_pb() {
    replay("oci_to_pb", wisp_fuzz::oci::to_pb);
}

#[test]
fn shim_config() {
    wisp_fuzz::shim::shim_config_init();
    replay("shim_config", wisp_fuzz::shim::shim_config);
}

#[test]
fn direct_volume() {
    replay("direct_volume", wisp_fuzz::shim::direct_volume);
}

#[test]
fn kernel_modules() {
    let harness = wisp_fuzz::modules::Harness::new().unwrap();
    replay("kernel_modules", |data| harness.run(data));
}

#[test]
fn every_target_has_seeds() {
    for target in corpus::TARGETS {
        assert!(!corpus::inputs(target).is_empty(), "{target} has no seeds");
    }
}

#[test]
fn layers_are_split_on_the_separator() {
    use wisp_fuzz::layer::{split, LAYER_SEPARATOR};
    let data = [b"one".as_slice(), LAYER_SEPARATOR, b"two"].concat();
    assert_eq!(split(&data), vec![b"one".as_slice(), b"two".as_slice()]);
    assert_eq!(split(b"only"), vec![b"only".as_slice()]);
}

#[test]
fn a_file_beside_the_layer_root_is_an_escape() {
    use std::path::PathBuf;
    use wisp_fuzz::layer::{outside_root, Harness};
    let h = Harness::new(false).unwrap();
    let base = h.base();
    assert!(outside_root(base).is_empty());
    std::fs::write(base.join("a/b/root/inside"), b"").unwrap();
    assert!(outside_root(base).is_empty());
    std::fs::write(base.join("a/b/outside/x"), b"").unwrap();
    std::fs::write(base.join("a/escaped"), b"").unwrap();
    let mut found = outside_root(base);
    found.sort();
    assert_eq!(found, vec![PathBuf::from("a/b/outside/x"), PathBuf::from("a/escaped")]);
}
