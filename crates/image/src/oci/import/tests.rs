//! `import` against exports built here: both `docker save` formats, a base's
//! layers, and exports that do not hold together or break off.

use serde_json::json;

use super::*;

/// An export of one image with a small and a large (> IN_MEMORY) layer, in
/// Docker 20.10's layout or (`oci`) Docker 25's, whose legacy paths are links.
/// Returns the tar, the image ID and the layers' contents.
fn export(oci: bool, claimed_diff: Option<&str>) -> (Vec<u8>, String, Vec<Vec<u8>>) {
    let layers = vec![
        b"small layer".to_vec(),
        vec![7u8; (IN_MEMORY as usize) * 3 / 2],
    ];
    let mut diff_ids: Vec<String> = layers.iter().map(|l| digest_of(l)).collect();
    if let Some(claimed) = claimed_diff {
        diff_ids[1] = claimed.to_owned();
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let id = digest_of(&config);
    let hex = |d: &str| d.trim_start_matches("sha256:").to_owned();
    let mut tar = tar::Builder::new(Vec::new());
    let file = |tar: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, path, bytes).unwrap();
    };
    let mut paths = Vec::new();
    for (n, layer) in layers.iter().enumerate() {
        let legacy = format!("l{n}/layer.tar");
        if oci {
            let blob = format!("blobs/sha256/{}", hex(&digest_of(layer)));
            file(&mut tar, &blob, layer);
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, &legacy, format!("../{blob}"))
                .unwrap();
        } else {
            file(&mut tar, &legacy, layer);
        }
        paths.push(legacy);
    }
    let config_path = if oci {
        format!("blobs/sha256/{}", hex(&id))
    } else {
        format!("{}.json", hex(&id))
    };
    file(&mut tar, &config_path, &config);
    let manifest = json!([{"Config": config_path, "RepoTags": [], "Layers": paths}]);
    file(&mut tar, "manifest.json", manifest.to_string().as_bytes());
    (tar.into_inner().unwrap(), id, layers)
}

fn options() -> Options {
    Options {
        compression: Compression::Gzip,
        threads: 2,
    }
}

fn take(tar: &[u8], id: &str, layout: &Layout) -> Result<Assembled, Fault> {
    take_over(tar, id, layout, &HashMap::new())
}

fn take_over(
    tar: &[u8],
    id: &str,
    layout: &Layout,
    shared: &HashMap<String, Descriptor>,
) -> Result<Assembled, Fault> {
    let cancel = CancellationToken::new();
    let export = read_export(tar, layout, options(), shared, &cancel)?;
    let exporting = Exporting {
        endpoint: "unix:///test.sock".into(),
        id: id.into(),
    };
    assemble(export, &exporting, layout, options(), shared, &cancel)
}

#[test]
fn a_layer_the_base_lends_is_taken_from_the_base_and_not_compressed_when_named() {
    let (tar, id, layers) = export(true, None);
    let lent = Descriptor {
        media_type: Compression::Gzip.media_type().into(),
        digest: format!("sha256:{}", "b".repeat(64)),
        size: 5,
        platform: None,
        annotations: Default::default(),
    };
    let shared = HashMap::from([(digest_of(&layers[1]), lent.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path()).unwrap();
    let taken = take_over(&tar, &id, &layout, &shared).unwrap_or_else(|f| panic!("{}", message(f)));
    assert_eq!(taken.layers[1], (lent, true));
    assert!(!taken.layers[0].1);
    // Only the small layer was compressed into the layout.
    let blobs = std::fs::read_dir(dir.path().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 1);
}

fn message(fault: Fault) -> String {
    match fault {
        Fault::Io(e) => format!("io: {e}"),
        Fault::Other(e) => e.to_string(),
    }
}

#[test]
fn both_export_formats_give_the_config_as_is_and_each_layer_compressed() {
    for oci in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let (tar, id, layers) = export(oci, None);
        let taken = take(&tar, &id, &layout).unwrap_or_else(|f| panic!("{}", message(f)));
        assert_eq!(digest_of(&taken.config), id);
        assert_eq!(taken.layers.len(), 2);
        for ((descriptor, from_base), content) in taken.layers.iter().zip(&layers) {
            assert!(!from_base);
            assert_eq!(descriptor.media_type, Compression::Gzip.media_type());
            let blob = std::fs::read(layout.blob_path(&descriptor.digest)).unwrap();
            assert_eq!(digest_of(&blob), descriptor.digest, "oci: {oci}");
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(blob.as_slice())
                .read_to_end(&mut plain)
                .unwrap();
            assert_eq!(&plain, content, "oci: {oci}");
        }
    }
}

#[test]
fn an_export_that_does_not_match_its_config_or_breaks_off_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path()).unwrap();
    let other = format!("sha256:{}", "0".repeat(64));
    let (tar, id, _) = export(false, Some(&other));
    let e = message(take(&tar, &id, &layout).err().unwrap());
    assert!(e.contains("not the config's"), "{e}");
    let (tar, _, _) = export(false, None);
    let e = message(take(&tar, &other, &layout).err().unwrap());
    assert!(e.contains("holds a config whose digest"), "{e}");
    // Cut inside the large layer: the stream's error, not the layout's disk.
    let (tar, id, _) = export(false, None);
    let e = message(take(&tar[..tar.len() / 2], &id, &layout).err().unwrap());
    assert!(e.starts_with("io: "), "{e}");
    // The engine's stream fails inside the large layer, read by the compressor's
    // writer: named as the stream's error, not the layout's.
    struct Failing<'a>(&'a [u8]);
    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.len() < (IN_MEMORY as usize) {
                return Err(io::Error::other("the engine went away"));
            }
            self.0.read(buf)
        }
    }
    let cancel = CancellationToken::new();
    let fault = read_export(Failing(&tar), &layout, options(), &HashMap::new(), &cancel)
        .err()
        .unwrap();
    assert_eq!(message(fault), "io: the engine went away");
    let mut empty = tar::Builder::new(Vec::new());
    empty.finish().unwrap();
    let e = message(
        take(&empty.into_inner().unwrap(), &id, &layout)
            .err()
            .unwrap(),
    );
    assert!(e.contains("has no manifest.json"), "{e}");
}

#[test]
fn paths_of_the_export_are_normalized_and_links_followed() {
    assert_eq!(normalize("./a//b/../c"), "a/c");
    assert_eq!(normalize("../../x"), "x");
    let mut export = Export::default();
    export
        .links
        .insert("abc/layer.tar".into(), "blobs/sha256/ff".into());
    export.links.insert("loop".into(), "loop".into());
    assert_eq!(export.resolve("./abc/layer.tar"), "blobs/sha256/ff");
    assert_eq!(export.resolve("loop"), "loop");
}

#[test]
fn docker_types_exist_for_gzip_layers_only() {
    assert_eq!(
        docker_type("application/vnd.oci.image.layer.v1.tar+gzip"),
        Some("application/vnd.docker.image.rootfs.diff.tar.gzip")
    );
    assert_eq!(
        docker_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        Some("application/vnd.docker.image.rootfs.diff.tar.gzip")
    );
    assert_eq!(
        docker_type("application/vnd.oci.image.layer.v1.tar+zstd"),
        None
    );
}
