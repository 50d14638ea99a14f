//! Range CRCs: field case F13.

use cloudpillar_protocol::crc::{RangeCrc, crc32, format_crc, parse_crc};

#[test]
fn each_chunk_including_the_short_last_one_has_its_crc() {
    let file = b"0123456789";
    let crcs: Vec<String> = file
        .chunks(4)
        .map(|chunk| format_crc(crc32(chunk)))
        .collect();
    assert_eq!(crcs, ["a6669d7d", "4d0ca3eb", "0943260c"]);
}

#[test]
fn incremental_crc_over_uneven_pieces_covers_the_whole_file() {
    let mut range = RangeCrc::new();
    for chunk in b"0123456789".chunks(4) {
        range.update(chunk);
    }
    assert_eq!(range.bytes(), 10);
    assert_eq!(format_crc(range.value()), "a684c7c6");
    assert_eq!(range.finalize(), 0xa684_c7c6);
    assert_eq!(crc32(b"0123456789"), 0xa684_c7c6);
}

#[test]
fn variant_is_iso_hdlc_not_crc32c() {
    assert_eq!(format_crc(crc32(b"123456789")), "cbf43926");
    assert_ne!(crc32(b"123456789"), 0xe306_9283);
}

#[test]
fn crc_text_is_eight_zero_padded_hex_digits() {
    assert_eq!(format_crc(0x0943_260c), "0943260c");
    assert_eq!(parse_crc("0943260c"), Ok(0x0943_260c));
    assert_eq!(parse_crc("A684C7C6"), Ok(0xa684_c7c6));
    for bad in ["943260c", "00943260c", "0943260g", "+943260c", ""] {
        assert!(parse_crc(bad).is_err(), "{bad:?} must be refused");
    }
}
