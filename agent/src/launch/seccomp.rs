//! The spec's `linux.seccomp` as a libseccomp filter, like runc: the default
//! action, the extra architectures, and one rule per syscall name (one per
//! argument condition when an argument index repeats, which libseccomp would
//! otherwise AND together). Unknown syscall names are skipped and reported.

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

use super::error::WireError;

/// One rule to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub name: String,
    pub syscall: ScmpSyscall,
    pub action: ScmpAction,
    pub conditions: Vec<ScmpArgCompare>,
}

/// The filter, computed from the spec before anything is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub default: ScmpAction,
    pub arches: Vec<ScmpArch>,
    pub rules: Vec<Rule>,
    /// Syscall names this libseccomp does not know (logged, like runc).
    pub skipped: Vec<String>,
    /// SECCOMP_FILTER_FLAG_LOG, _SPEC_ALLOW and _TSYNC, in that order.
    pub log: bool,
    pub spec_allow: bool,
    pub tsync: bool,
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, WireError> {
    use LinuxSeccompAction as A;
    let errno = errno.map(|e| e as i32).unwrap_or(libc::EPERM);
    Ok(match a {
        A::ScmpActKill | A::ScmpActKillThread => ScmpAction::KillThread,
        A::ScmpActKillProcess => ScmpAction::KillProcess,
        A::ScmpActTrap => ScmpAction::Trap,
        A::ScmpActErrno => ScmpAction::Errno(errno),
        A::ScmpActTrace => ScmpAction::Trace(errno as u16),
        A::ScmpActLog => ScmpAction::Log,
        A::ScmpActAllow => ScmpAction::Allow,
        A::ScmpActNotify => return Err(WireError::invalid("seccomp: SCMP_ACT_NOTIFY is not supported")),
    })
}

fn compare(op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> (ScmpCompareOp, u64) {
    use LinuxSeccompOperator as O;
    match op {
        O::ScmpCmpNe => (ScmpCompareOp::NotEqual, value),
        O::ScmpCmpLt => (ScmpCompareOp::Less, value),
        O::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, value),
        O::ScmpCmpEq => (ScmpCompareOp::Equal, value),
        O::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, value),
        O::ScmpCmpGt => (ScmpCompareOp::Greater, value),
        // OCI: `value` is the mask, `valueTwo` the value compared.
        O::ScmpCmpMaskedEq => (ScmpCompareOp::MaskedEqual(value), value_two.unwrap_or(0)),
    }
}

/// Builds the plan; an invalid action or architecture is a bad spec.
pub(crate) fn plan(spec: &LinuxSeccomp) -> Result<Plan, WireError> {
    let default = action(spec.default_action(), spec.default_errno_ret())?;
    let mut arches = Vec::new();
    for a in spec.architectures().iter().flatten() {
        let name = serde_json::to_value(a).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let arch: ScmpArch =
            name.parse().map_err(|_| WireError::invalid(format!("seccomp: unknown architecture {name:?}")))?;
        arches.push(arch);
    }
    let mut rules = Vec::new();
    let mut skipped = Vec::new();
    for sc in spec.syscalls().iter().flatten() {
        let act = action(sc.action(), sc.errno_ret())?;
        let args = sc.args().clone().unwrap_or_default();
        let mut conds: Vec<ScmpArgCompare> = Vec::new();
        for a in &args {
            if a.index() > 5 {
                return Err(WireError::invalid(format!("seccomp: argument index {} is out of range", a.index())));
            }
            let (op, datum) = compare(a.op(), a.value(), a.value_two());
            conds.push(ScmpArgCompare::new(a.index() as u32, op, datum));
        }
        let mut indices: Vec<usize> = args.iter().map(|a| a.index()).collect();
        indices.sort_unstable();
        let repeated = indices.windows(2).any(|w| w[0] == w[1]);
        // Repeated indices mean "any of": one rule per condition.
        let groups: Vec<Vec<ScmpArgCompare>> =
            if repeated { conds.into_iter().map(|c| vec![c]).collect() } else { vec![conds] };
        for name in sc.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                skipped.push(name.clone());
                continue;
            };
            // A rule whose action is the default action is refused by libseccomp and means nothing.
            if act == default {
                continue;
            }
            for g in &groups {
                rules.push(Rule { name: name.clone(), syscall, action: act, conditions: g.clone() });
            }
        }
    }
    let (mut log, mut spec_allow, mut tsync) = (false, false, false);
    for f in spec.flags().iter().flatten() {
        use oci_spec::runtime::LinuxSeccompFilterFlag as F;
        match f {
            F::SeccompFilterFlagLog => log = true,
            F::SeccompFilterFlagSpecAllow => spec_allow = true,
            F::SeccompFilterFlagTsync => tsync = true,
            F::SeccompFilterFlagWaitKillableRecv => {
                return Err(WireError::invalid("seccomp: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs a listener"))
            }
        }
    }
    Ok(Plan { default, arches, rules, skipped, log, spec_allow, tsync })
}

/// Compiles and loads the plan into the calling process.
pub(crate) fn load(plan: &Plan) -> Result<(), WireError> {
    let err = |what: String, e: libseccomp::error::SeccompError| WireError::setup(format!("seccomp: {what}: {e}"));
    let mut ctx = ScmpFilterContext::new(plan.default).map_err(|e| err("new filter".into(), e))?;
    // The caller decides about no_new_privs; libseccomp would set it.
    ctx.set_ctl_nnp(false).map_err(|e| err("nnp attribute".into(), e))?;
    if plan.log {
        ctx.set_ctl_log(true).map_err(|e| err("flag SECCOMP_FILTER_FLAG_LOG".into(), e))?;
    }
    if plan.spec_allow {
        ctx.set_ctl_ssb(true).map_err(|e| err("flag SECCOMP_FILTER_FLAG_SPEC_ALLOW".into(), e))?;
    }
    if plan.tsync {
        ctx.set_ctl_tsync(true).map_err(|e| err("flag SECCOMP_FILTER_FLAG_TSYNC".into(), e))?;
    }
    for a in &plan.arches {
        ctx.add_arch(*a).map_err(|e| err(format!("add architecture {a:?}"), e))?;
    }
    for r in &plan.rules {
        ctx.add_rule_conditional(r.action, r.syscall, &r.conditions)
            .map_err(|e| err(format!("rule for {}", r.name), e))?;
    }
    ctx.load().map_err(|e| err("load".into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn rules_follow_the_spec_and_unknown_names_are_skipped() {
        let p = plan(&spec(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86","SCMP_ARCH_AARCH64"],
                "syscalls":[{"names":["mkdir","mkdirat","no_such_call"],"action":"SCMP_ACT_ERRNO"},
                            {"names":["kill"],"action":"SCMP_ACT_ERRNO","errnoRet":13,
                             "args":[{"index":1,"value":9,"op":"SCMP_CMP_EQ"},{"index":0,"value":1,"op":"SCMP_CMP_GT"}]},
                            {"names":["getpid"],"action":"SCMP_ACT_ALLOW"}]}"#,
        ))
        .unwrap();
        assert_eq!(p.default, ScmpAction::Allow);
        assert_eq!(p.arches, vec![ScmpArch::X86, ScmpArch::Aarch64]);
        assert_eq!(p.skipped, vec!["no_such_call"]);
        let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["mkdir", "mkdirat", "kill"], "getpid equals the default action");
        assert_eq!(p.rules[0].action, ScmpAction::Errno(libc::EPERM));
        assert_eq!(p.rules[0].syscall, ScmpSyscall::from_name("mkdir").unwrap());
        assert_eq!(p.rules[2].action, ScmpAction::Errno(13));
        assert_eq!(
            p.rules[2].conditions,
            vec![ScmpArgCompare::new(1, ScmpCompareOp::Equal, 9), ScmpArgCompare::new(0, ScmpCompareOp::Greater, 1)]
        );
    }

    #[test]
    fn a_repeated_argument_index_splits_into_alternatives() {
        let p = plan(&spec(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,
                "syscalls":[{"names":["personality"],"action":"SCMP_ACT_ALLOW",
                 "args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"},{"index":0,"value":8,"op":"SCMP_CMP_EQ"},
                         {"index":0,"value":255,"valueTwo":8,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        ))
        .unwrap();
        assert_eq!(p.default, ScmpAction::Errno(38));
        assert!(!p.log && !p.spec_allow && !p.tsync);
        assert_eq!(p.rules.len(), 3);
        assert!(p.rules.iter().all(|r| r.conditions.len() == 1));
        assert_eq!(p.rules[2].conditions[0], ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(255), 8));
    }

    #[test]
    fn filter_flags_are_carried() {
        let p = plan(&spec(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}"#,
        ))
        .unwrap();
        assert!(p.log && p.spec_allow && !p.tsync);
    }

    #[test]
    fn notify_and_bad_indices_are_refused() {
        let e = plan(&spec(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#)).unwrap_err();
        assert!(e.msg.contains("NOTIFY"), "{e}");
        let e = plan(&spec(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO",
                "args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
        ))
        .unwrap_err();
        assert!(e.msg.contains("index 6"), "{e}");
    }

    #[test]
    fn the_plan_compiles_into_a_filter() {
        let p = plan(&spec(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        ))
        .unwrap();
        let mut ctx = ScmpFilterContext::new(p.default).unwrap();
        for r in &p.rules {
            ctx.add_rule_conditional(r.action, r.syscall, &r.conditions).unwrap();
        }
        let out = tempfile::tempfile().unwrap();
        ctx.export_pfc(&out).unwrap();
        let text = std::fs::read_to_string(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&out))).unwrap();
        assert!(text.contains("mkdir"), "{text}");
    }
}
