//! Blob round trips on the filesystem store and on Azurite.

mod common;

use bytes::Bytes;
use cloudpillar_backend::blob::{
    BlobConfig, BlobStores, CommittedUpload, UploadAssembler, UploadChunk, UploadProgress,
};
use futures::TryStreamExt;

/// Writes, range-reads, block-writes, lists and deletes through one set of containers.
async fn round_trip(stores: &BlobStores, prefix: &str) {
    let data = common::pattern(3 * 1024 * 1024 + 17, 7);
    let whole = format!("{prefix}/whole.bin");
    stores
        .patches
        .put(&whole, Bytes::from(data.clone()))
        .await
        .expect("put");
    assert_eq!(
        stores.patches.size(&whole).await.expect("size"),
        data.len() as u64
    );

    // Range reads at the start, across the middle and at the short tail.
    for range in [
        0..1u64,
        49_152..98_304,
        1_000_000..2_500_000,
        data.len() as u64 - 5..data.len() as u64,
    ] {
        let got = stores
            .patches
            .read_range(&whole, range.clone())
            .await
            .expect("range");
        assert_eq!(
            &got[..],
            &data[range.start as usize..range.end as usize],
            "range {range:?}"
        );
    }

    // A block write in uneven pieces reads back byte-exact, also as a stream.
    let blocks = format!("{prefix}/blocks.bin");
    let mut writer = stores.patches.writer(&blocks).await.expect("writer");
    for piece in data.chunks(700_001) {
        writer
            .write(Bytes::copy_from_slice(piece))
            .await
            .expect("write");
    }
    assert!(
        !stores.patches.exists(&blocks).await.expect("exists"),
        "visible before commit"
    );
    writer.finish().await.expect("finish");
    let streamed: Vec<Bytes> = stores
        .patches
        .read_stream(&blocks)
        .await
        .expect("stream")
        .try_collect()
        .await
        .expect("read");
    assert_eq!(streamed.concat(), data);

    let listed = stores.patches.list(prefix).await.expect("list");
    assert_eq!(listed, vec![blocks.clone(), whole.clone()]);
    stores.patches.delete(&whole).await.expect("delete");
    stores
        .patches
        .delete(&whole)
        .await
        .expect("deleting twice is fine");
    assert!(!stores.patches.exists(&whole).await.expect("exists"));
}

/// A chunk without upload id, carried by event 7.
fn plain_chunk<'a>(
    device: &'a str,
    file_id: &'a str,
    offset: u64,
    data: Bytes,
    size: Option<u64>,
) -> UploadChunk<'a> {
    UploadChunk {
        device,
        file_id,
        upload_id: None,
        offset,
        data,
        size,
        seq: 7,
        time_ms: 1_000,
    }
}

/// The upload a chunk of [`plain_chunk`] completes.
fn committed(path: &str, size: u64) -> CommittedUpload {
    CommittedUpload {
        path: path.into(),
        size,
        upload_id: None,
        seq: 7,
        time_ms: 1_000,
    }
}

/// True when nothing of `device`'s uploads without upload id is staged.
async fn nothing_staged(stores: &BlobStores, device: &str) -> bool {
    let staging = format!("upload-staging/{device}");
    stores.state.list(&staging).await.expect("list").is_empty()
}

/// Chunks arriving out of order and twice assemble into the exact file.
async fn upload_assembles(stores: &BlobStores, device: &str) {
    let data = common::pattern(200_000, 11);
    let assembler = UploadAssembler::new(stores.uploads.clone(), stores.state.clone());
    let chunks: Vec<(u64, &[u8])> = data
        .chunks(49_152)
        .enumerate()
        .map(|(i, c)| (i as u64 * 49_152, c))
        .collect();
    let order = [3, 0, 0, 4, 2, 3];
    for index in order {
        let (offset, chunk) = chunks[index];
        let progress = assembler
            .accept(plain_chunk(
                device,
                "app.log",
                offset,
                Bytes::copy_from_slice(chunk),
                Some(data.len() as u64),
            ))
            .await
            .expect("accept");
        assert!(
            matches!(progress, UploadProgress::Staged { .. }),
            "{progress:?}"
        );
    }
    let (offset, chunk) = chunks[1];
    let progress = assembler
        .accept(plain_chunk(
            device,
            "app.log",
            offset,
            Bytes::copy_from_slice(chunk),
            Some(data.len() as u64),
        ))
        .await
        .expect("accept last");
    let path = format!("{device}/app.log");
    assert_eq!(
        progress,
        UploadProgress::Committed(committed(&path, data.len() as u64))
    );
    assert_eq!(stores.uploads.read_all(&path).await.expect("read"), data);
    assert!(
        nothing_staged(stores, device).await,
        "staging left after the commit"
    );

    // A replayed chunk after the commit changes nothing.
    let (offset, chunk) = chunks[2];
    let replay = UploadAssembler::new(stores.uploads.clone(), stores.state.clone())
        .accept(plain_chunk(
            device,
            "app.log",
            offset,
            Bytes::copy_from_slice(chunk),
            Some(data.len() as u64),
        ))
        .await
        .expect("replay");
    assert_eq!(
        replay,
        UploadProgress::Committed(committed(&path, data.len() as u64))
    );
    assert_eq!(stores.uploads.read_all(&path).await.expect("read"), data);
    assert!(
        nothing_staged(stores, device).await,
        "the replayed chunk was staged"
    );
}

#[tokio::test]
async fn filesystem_store_round_trips_byte_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = BlobStores::open(&BlobConfig::Filesystem {
        root: dir.path().to_owned(),
    })
    .await
    .expect("open");
    round_trip(&stores, "t").await;
    upload_assembles(&stores, "dev-fs").await;
}

#[tokio::test]
async fn azurite_store_round_trips_byte_exact() {
    let stores = common::azurite_stores().await;
    let prefix = common::unique("t");
    round_trip(&stores, &prefix).await;
    upload_assembles(&stores, &common::unique("dev-az-")).await;
}

#[tokio::test]
async fn upload_assembly_survives_a_restart_between_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BlobConfig::Filesystem {
        root: dir.path().to_owned(),
    };
    let stores = BlobStores::open(&config).await.expect("open");
    let data = common::pattern(100_000, 3);
    let first = UploadAssembler::new(stores.uploads.clone(), stores.state.clone());
    first
        .accept(plain_chunk(
            "dev-1",
            "f",
            50_000,
            Bytes::copy_from_slice(&data[50_000..]),
            None,
        ))
        .await
        .expect("second half");
    drop(first);

    let reopened = BlobStores::open(&config).await.expect("reopen");
    let second = UploadAssembler::new(reopened.uploads.clone(), reopened.state.clone());
    let progress = second
        .accept(plain_chunk(
            "dev-1",
            "f",
            0,
            Bytes::copy_from_slice(&data[..50_000]),
            Some(100_000),
        ))
        .await
        .expect("first half");
    assert_eq!(
        progress,
        UploadProgress::Committed(committed("dev-1/f", 100_000))
    );
    assert_eq!(
        reopened.uploads.read_all("dev-1/f").await.expect("read"),
        data
    );
}

#[tokio::test]
async fn blob_paths_with_traversal_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = BlobStores::open(&BlobConfig::Filesystem {
        root: dir.path().to_owned(),
    })
    .await
    .expect("open");
    for bad in ["../x", "a/../b", "/abs", "a//b", "", "a/"] {
        assert!(
            stores
                .patches
                .put(bad, Bytes::from_static(b"x"))
                .await
                .is_err(),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn a_stale_last_chunk_after_a_newer_one_does_not_cut_the_upload_short() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = BlobStores::open(&BlobConfig::Filesystem {
        root: dir.path().to_owned(),
    })
    .await
    .expect("open");
    let data = common::pattern(3_000, 5);
    let assembler = UploadAssembler::new(stores.uploads.clone(), stores.state.clone());
    let piece = |from: usize, to: usize| Bytes::copy_from_slice(&data[from..to]);
    // The log grew while a chunk that once ended it was dropped and is sent again later,
    // still marked last: the newer, longer end wins.
    let sends = [
        (0, piece(0, 1_000), None),
        (2_000, piece(2_000, 3_000), Some(3_000)),
        (1_000, piece(1_000, 2_000), Some(2_000)),
    ];
    let mut last = None;
    for (offset, bytes, size) in sends {
        last = Some(
            assembler
                .accept(plain_chunk("dev-stale", "log-a", offset, bytes, size))
                .await
                .expect("accept"),
        );
    }
    match last {
        Some(UploadProgress::Committed(stored)) => assert_eq!(stored.size, 3_000),
        other => panic!("expected the whole upload committed, got {other:?}"),
    }
    let stored = stores
        .uploads
        .read_all("dev-stale/log-a")
        .await
        .expect("read");
    assert!(stored == data, "stored bytes differ");
}

#[tokio::test]
async fn a_container_prefix_outside_the_naming_rules_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `../../escape-` would resolve to the temporary directory itself.
    let config = BlobConfig::Filesystem {
        root: dir.path().join("site").join("blobs"),
    };
    for prefix in ["../../escape-", "Fleet-", "a/b-", "x--"] {
        let opened = BlobStores::open_prefixed(&config, prefix).await;
        assert!(opened.is_err(), "prefix {prefix:?} accepted");
    }
    assert!(
        !dir.path().join("escape-state").exists(),
        "nothing created outside the root"
    );
    BlobStores::open_prefixed(&config, "site-7-")
        .await
        .expect("a valid prefix");
}
