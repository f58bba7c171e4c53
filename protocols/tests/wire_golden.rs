//! Pins the complete wire schema (every package, service, method, message,
//! field number, type and label) against `tests/wire_golden.txt`.
//!
//! The golden file was reviewed field by field against Kata Containers 4.1's
//! published protos. Any change to `protos/` shows up here as a diff: if it
//! is intended (it should essentially never be for Kata's packages), rerun
//! with `WISP_UPDATE_GOLDEN=1` and review the golden diff.

use std::fmt::Write as _;
use std::path::Path;

use protocols::protobuf::descriptor::field_descriptor_proto::{Label, Type};
use protocols::protobuf::descriptor::{DescriptorProto, EnumDescriptorProto};
use protocols::protobuf::reflect::FileDescriptor;

fn dump_enum(out: &mut String, scope: &str, e: &EnumDescriptorProto) {
    for v in &e.value {
        writeln!(out, "enum {scope}.{}.{} = {}", e.name(), v.name(), v.number()).unwrap();
    }
}

fn dump_message(out: &mut String, scope: &str, m: &DescriptorProto) {
    let name = format!("{scope}.{}", m.name());
    writeln!(out, "message {name}").unwrap();
    for f in &m.field {
        let label = match f.label() {
            Label::LABEL_REPEATED => "repeated ",
            _ if f.proto3_optional() => "optional ",
            _ => "",
        };
        let ty = match f.type_() {
            Type::TYPE_MESSAGE | Type::TYPE_ENUM => f.type_name().trim_start_matches('.').to_string(),
            t => format!("{t:?}").trim_start_matches("TYPE_").to_lowercase(),
        };
        let oneof = match f.oneof_index {
            Some(i) if !f.proto3_optional() => {
                format!(" oneof {}", m.oneof_decl[i as usize].name())
            }
            _ => String::new(),
        };
        writeln!(out, "  {} = {} {label}{ty}{oneof}", f.name(), f.number()).unwrap();
    }
    for e in &m.enum_type {
        dump_enum(out, &name, e);
    }
    for nested in &m.nested_type {
        dump_message(out, &name, nested);
    }
}

fn dump_file(out: &mut String, file: &FileDescriptor) {
    let p = file.proto();
    writeln!(out, "file {} package {}", p.name(), p.package()).unwrap();
    for dep in &p.dependency {
        writeln!(out, "import {dep}").unwrap();
    }
    for s in &p.service {
        for m in &s.method {
            writeln!(
                out,
                "rpc {}.{}/{}({}) returns ({})",
                p.package(),
                s.name(),
                m.name(),
                m.input_type().trim_start_matches('.'),
                m.output_type().trim_start_matches('.')
            )
            .unwrap();
        }
    }
    for e in &p.enum_type {
        dump_enum(out, p.package(), e);
    }
    for m in &p.message_type {
        dump_message(out, p.package(), m);
    }
    out.push('\n');
}

#[test]
fn wire_schema_matches_golden() {
    let mut got = String::new();
    for file in [
        protocols::agent::file_descriptor(),
        protocols::health::file_descriptor(),
        protocols::types::file_descriptor(),
        protocols::oci::file_descriptor(),
        protocols::csi::file_descriptor(),
    ] {
        dump_file(&mut got, file);
    }

    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wire_golden.txt");
    if std::env::var_os("WISP_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&golden).expect("read tests/wire_golden.txt");
    if got != want {
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "first difference at line {}", i + 1);
        }
        assert_eq!(got.lines().count(), want.lines().count(), "line count differs");
        panic!("wire schema differs from tests/wire_golden.txt");
    }
}
