//! The Dockerfile's text: its final `FROM` read and rewritten, and the one
//! `LABEL` instruction appended to it.

use crate::error::{Error, Result};

/// The image of the last `FROM` (the final stage), if any.
pub fn final_from(dockerfile: &str) -> Option<String> {
    dockerfile
        .lines()
        .rev()
        .find_map(parse_from)
        .map(|f| f.image.to_owned())
}

struct From<'a> {
    image: &'a str,
    image_start: usize,
}

fn parse_from(line: &str) -> Option<From<'_>> {
    let trimmed = line.trim_start();
    let indent = line.len() - trimmed.len();
    let keyword = trimmed.get(..4)?;
    if !keyword.eq_ignore_ascii_case("from") || !trimmed[4..].starts_with([' ', '\t']) {
        return None;
    }
    let mut offset = indent + 4;
    for word in line[offset..].split_whitespace() {
        let start = offset + line[offset..].find(word)?;
        offset = start + word.len();
        if word.starts_with("--") {
            continue;
        }
        return Some(From {
            image: word,
            image_start: start,
        });
    }
    None
}

/// Replace the final stage's base image with `image`, keeping flags and `AS name`.
pub fn rewrite_from(dockerfile: &str, image: &str) -> Result<(String, String)> {
    if image != "scratch" && !image.starts_with("oci:") {
        crate::reference::ImageRef::parse(image).map_err(|e| Error::BaseImage {
            reason: e.to_string(),
        })?;
    }
    let last = dockerfile
        .lines()
        .enumerate()
        .filter(|(_, l)| parse_from(l).is_some())
        .map(|(i, _)| i)
        .max()
        .ok_or_else(|| Error::BaseImage {
            reason: "the Dockerfile has no FROM line to rewrite".into(),
        })?;
    let mut out = String::with_capacity(dockerfile.len() + image.len());
    for (i, line) in dockerfile.split_inclusive('\n').enumerate() {
        match parse_from(line).filter(|_| i == last) {
            Some(from) => {
                out.push_str(&line[..from.image_start]);
                out.push_str(image);
                out.push_str(&line[from.image_start + from.image.len()..]);
            }
            None => out.push_str(line),
        }
    }
    Ok((out, image.to_owned()))
}

/// One `LABEL` instruction for all `labels`, keys and values quoted; empty when there are none.
pub(super) fn label_instruction<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> String {
    let quote = |s: &str| {
        let mut q = String::with_capacity(s.len() + 2);
        q.push('"');
        for c in s.chars() {
            match c {
                '"' | '\\' | '$' => {
                    q.push('\\');
                    q.push(c);
                }
                '\n' | '\r' => q.push(' '),
                c => q.push(c),
            }
        }
        q.push('"');
        q
    };
    let pairs: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("LABEL {}\n", pairs.join(" \\\n      "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAM: &str = "# Copyright\n\nFROM registry.k8s.io/build-image/go-runner:v2.3.1-go1.22.0-bookworm.0\n\nCOPY kubemark /kubemark\n";

    #[test]
    fn rewrites_only_the_final_from() {
        let (out, base) = rewrite_from(UPSTREAM, "127.0.0.1:5000/base:1").unwrap();
        assert_eq!(base, "127.0.0.1:5000/base:1");
        assert_eq!(
            out,
            UPSTREAM.replace(
                "registry.k8s.io/build-image/go-runner:v2.3.1-go1.22.0-bookworm.0",
                "127.0.0.1:5000/base:1"
            )
        );

        let multi = "FROM golang AS build\nRUN make\nfrom --platform=linux/amd64 debian:12 as final\nCOPY --from=build /x /x\n";
        let (out, _) = rewrite_from(multi, "scratch").unwrap();
        assert_eq!(
            out,
            "FROM golang AS build\nRUN make\nfrom --platform=linux/amd64 scratch as final\nCOPY --from=build /x /x\n"
        );
        assert_eq!(final_from(multi).as_deref(), Some("debian:12"));
    }

    #[test]
    fn rewrite_refuses_what_it_cannot_do() {
        assert!(matches!(
            rewrite_from("COPY a b\n", "scratch"),
            Err(Error::BaseImage { .. })
        ));
        assert!(matches!(
            rewrite_from(UPSTREAM, "Not A Ref"),
            Err(Error::BaseImage { .. })
        ));
        assert_eq!(final_from("FROMX y\n"), None);
    }
}
