//! Generates the protobuf messages and async ttrpc bindings from `protos/`.
//!
//! Output goes to `$OUT_DIR/gen/` and is pulled into the crate with
//! `include!` (see `src/lib.rs`). Two fix-ups are applied to what the
//! generators write, and both fail the build loudly if the generator output
//! changes shape:
//!
//! * inner attributes (`#![...]`) and inner doc comments (`//!`) are
//!   stripped, because `include!` cannot splice a file that carries them into
//!   an inline `mod { }`; `lib.rs` puts the equivalent `#[allow(...)]` on
//!   each module instead.
//! * the default body of every generated service method returns
//!   `Code::NOT_FOUND`; we rewrite it to `Code::UNIMPLEMENTED`, the status
//!   gRPC/ttrpc use for "method exists but is not implemented" (and what the
//!   ttrpc server itself answers for an unregistered method).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

/// Every .proto we compile; `google/protobuf/empty.proto` is resolved by the
/// pure-Rust parser itself and maps onto `protobuf::well_known_types`.
const PROTOS: &[&str] = &[
    "protos/agent.proto",
    "protos/health.proto",
    "protos/types.proto",
    "protos/oci.proto",
    "protos/csi.proto",
    "protos/wisp.proto",
];

/// Files the generators must produce, all included by `src/lib.rs`.
const GENERATED: &[&str] = &[
    "agent.rs",
    "agent_ttrpc.rs",
    "health.rs",
    "health_ttrpc.rs",
    "types.rs",
    "oci.rs",
    "csi.rs",
    "wisp.rs",
    "wisp_ttrpc.rs",
];

const DEFAULT_STATUS_FROM: &str = "::ttrpc::get_status(::ttrpc::Code::NOT_FOUND,";
const DEFAULT_STATUS_TO: &str = "::ttrpc::get_status(::ttrpc::Code::UNIMPLEMENTED,";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=protos");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let gen_dir = out_dir.join("gen");
    if gen_dir.exists() {
        fs::remove_dir_all(&gen_dir).expect("clean $OUT_DIR/gen");
    }
    fs::create_dir_all(&gen_dir).expect("create $OUT_DIR/gen");

    Codegen::new()
        .out_dir(&gen_dir)
        .inputs(PROTOS)
        .include("protos")
        .rust_protobuf()
        .customize(Customize { async_all: true, ..Default::default() })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false).generate_accessors(true))
        .run()
        .expect("ttrpc-codegen failed on protos/");

    for name in GENERATED {
        fix_up(&gen_dir.join(name));
    }
}

fn fix_up(path: &Path) {
    let src = fs::read_to_string(path).unwrap_or_else(|e| panic!("generator did not write {}: {e}", path.display()));

    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//!") {
            continue;
        }
        if trimmed.starts_with("#![") {
            assert!(trimmed.ends_with(']'), "multi-line inner attribute in {}: {line}", path.display());
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }

    if path.to_string_lossy().ends_with("_ttrpc.rs") {
        assert!(
            out.contains(DEFAULT_STATUS_FROM),
            "{}: generated default method body changed; update build.rs",
            path.display()
        );
        out = out.replace(DEFAULT_STATUS_FROM, DEFAULT_STATUS_TO);
    }

    fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
