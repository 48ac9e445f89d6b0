//! What goes into the image: its labels, and a fingerprint of every input.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{Builder, DIRTY_LABEL};
use crate::context::{self, Context};
use crate::source::{self, Checkout};

/// The image's labels, all but the fingerprint: what it is, where from, built how.
pub(super) fn labels(
    url: &str,
    checkout: &Checkout,
    context: &Context,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert(
        "org.opencontainers.image.title".to_owned(),
        "kubemark".to_owned(),
    );
    labels.insert(
        "org.opencontainers.image.source".to_owned(),
        source::redact_url(url),
    );
    labels.insert(
        "org.opencontainers.image.revision".to_owned(),
        checkout.commit.clone(),
    );
    labels.insert(
        "org.opencontainers.image.version".to_owned(),
        checkout.version.clone(),
    );
    labels.insert(
        "org.opencontainers.image.base.name".to_owned(),
        context.base.clone(),
    );
    labels.insert(DIRTY_LABEL.to_owned(), checkout.dirty.to_string());
    labels.insert(
        "dev.kubemark.binary.sha256".to_owned(),
        context.binary_sha256.clone(),
    );
    labels
}

/// A digest of everything that goes into one platform's image: same fingerprint,
/// same image, whatever its tag (the record is kept per reference).
pub(super) fn fingerprint(
    context: &Context,
    base_id: &str,
    labels: &BTreeMap<String, String>,
    platform: Option<&str>,
) -> String {
    let mut h = Sha256::new();
    h.update(b"kubemark-image-inputs v2\n");
    h.update(format!(
        "context {}\nbase {base_id}\nplatform {}\n",
        context.digest,
        platform.unwrap_or("")
    ));
    for (k, v) in labels {
        h.update(format!("label {k}={v}\n"));
    }
    format!("sha256:{}", context::hex(&h.finalize()))
}

/// The record's fingerprint: every platform's, and the builder (a run with the
/// other builder builds again).
pub(super) fn combine(
    fingerprints: &[String],
    builder: Builder,
    compression: crate::oci::Compression,
) -> String {
    if let [one] = fingerprints
        && builder == Builder::Engine
        && compression == crate::oci::Compression::Gzip
    {
        return one.clone();
    }
    let mut h = Sha256::new();
    h.update(format!("builder {}\n", builder.as_str()));
    // Layers differ by compression: another one is another image.
    if builder == Builder::Oci || compression != crate::oci::Compression::Gzip {
        h.update(format!("compression {compression}\n"));
    }
    for f in fingerprints {
        h.update(format!("{f}\n"));
    }
    format!("sha256:{}", context::hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Compression;

    #[test]
    fn the_record_fingerprint_counts_the_builder_and_any_compression_but_gzip() {
        let one = vec!["sha256:aa".to_owned()];
        // The engine's gzip image keeps the fingerprint it always had: older records stay current.
        assert_eq!(
            combine(&one, Builder::Engine, Compression::Gzip),
            "sha256:aa"
        );
        let all = [
            combine(&one, Builder::Engine, Compression::Gzip),
            combine(&one, Builder::Engine, Compression::Zstd),
            combine(&one, Builder::Engine, Compression::None),
            combine(&one, Builder::Oci, Compression::Gzip),
            combine(&one, Builder::Oci, Compression::Zstd),
        ];
        let distinct: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "{all:?}");
    }
}
