//! Choosing one image from an archive that holds several (`docker save a b`, `ctr images
//! export out.tar a b`): by the name the user gives (`bundle --image NAME[:TAG]`), never by
//! position, since taking the first would silently build an image the user did not ask for.
//!
//! Names compare as docker normalises them, so `alpine`, `alpine:latest` and
//! `docker.io/library/alpine:latest` are one name, whichever form the archive writer used.

use crate::oci_image::Reference;

/// The flag that picks an image, for messages.
pub const IMAGE_FLAG: &str = "--image NAME[:TAG]";

/// One image of an archive: its names (tags) and an identity (config or manifest digest) that
/// tells two entries of the same image apart from two images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub names: Vec<String>,
    pub identity: String,
}

/// `name` as `registry/repository:tag`, or as given when it is not a valid reference.
fn canonical(name: &str) -> String {
    Reference::parse(name).map(|r| r.full()).unwrap_or_else(|_| name.to_owned())
}

/// How the images are listed in errors: each image's names, or its identity when it has none.
fn listing(candidates: &[Candidate]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    let mut shown = Vec::new();
    for c in candidates {
        if seen.contains(&c.identity.as_str()) {
            continue;
        }
        seen.push(&c.identity);
        let names: Vec<&String> =
            candidates.iter().filter(|o| o.identity == c.identity).flat_map(|o| &o.names).collect();
        shown.push(if names.is_empty() {
            format!("an untagged image ({})", c.identity)
        } else {
            names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(" = ")
        });
    }
    shown.join(", ")
}

/// The indexes of `candidates` that make up the chosen image. `wanted` picks by name;
/// without it, the archive must hold one image (entries sharing an identity are one image).
/// `what` names the list in messages (e.g. "manifest.json").
pub fn choose(candidates: &[Candidate], wanted: Option<&str>, what: &str) -> Result<Vec<usize>, String> {
    match wanted {
        Some(wanted) => {
            let want = canonical(wanted);
            let chosen: Vec<usize> =
                (0..candidates.len()).filter(|&i| candidates[i].names.iter().any(|n| canonical(n) == want)).collect();
            if chosen.is_empty() {
                return Err(format!(
                    "no image named {wanted} ({want}) in {what}; it holds {}",
                    if candidates.is_empty() { "no image".to_owned() } else { listing(candidates) }
                ));
            }
            Ok(chosen)
        }
        None => {
            let first = candidates.first().map(|c| c.identity.as_str());
            if candidates.iter().any(|c| Some(c.identity.as_str()) != first) {
                return Err(format!(
                    "{what} lists several images: {}; choose one with {IMAGE_FLAG}",
                    listing(candidates)
                ));
            }
            Ok((0..candidates.len()).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(names: &[&str], identity: &str) -> Candidate {
        Candidate { names: names.iter().map(|n| (*n).to_owned()).collect(), identity: identity.into() }
    }

    #[test]
    fn one_image_needs_no_name_several_do() {
        let one = [c(&["alpine:3.20"], "a"), c(&["docker.io/library/alpine:edge"], "a")];
        assert_eq!(choose(&one, None, "m").unwrap(), [0, 1], "two tags of one image");
        let two = [c(&["alpine:3.20"], "a"), c(&[], "b"), c(&["busybox"], "c")];
        let err = choose(&two, None, "manifest.json").unwrap_err();
        assert!(err.contains("alpine:3.20, an untagged image (b), busybox"), "{err}");
        assert!(err.contains("--image"), "{err}");
    }

    #[test]
    fn names_compare_normalised() {
        let two = [c(&["docker.io/library/alpine:3.20"], "a"), c(&["busybox:latest", "bb:1"], "b")];
        assert_eq!(choose(&two, Some("alpine:3.20"), "m").unwrap(), [0]);
        assert_eq!(choose(&two, Some("docker.io/library/busybox"), "m").unwrap(), [1]);
        assert_eq!(choose(&two, Some("bb:1"), "m").unwrap(), [1]);
        let err = choose(&two, Some("alpine"), "m").unwrap_err();
        assert!(err.contains("docker.io/library/alpine:latest") && err.contains("busybox:latest = bb:1"), "{err}");
    }
}
