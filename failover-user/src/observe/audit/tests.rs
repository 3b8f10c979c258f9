use super::*;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "failover-audit-test-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn file(&self) -> PathBuf {
        self.0.join("audit.log")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rec(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn ts(n: u32) -> String {
    format!("2024-01-02T03:04:{n:02}.000001Z")
}

/// A log with three lines; returns its lines (without newlines).
fn three(path: &Path) -> Vec<String> {
    let mut log = AuditLog::open(path).unwrap();
    for (i, (event, backend)) in [("down", "alpha"), ("failover", "beta"), ("up", "alpha")]
        .into_iter()
        .enumerate()
    {
        let seq = log
            .append(
                &ts(i as u32),
                rec(json!({"event": event, "backend": backend, "n": i})),
            )
            .unwrap();
        assert_eq!(seq, i as u64 + 1);
    }
    lines(path)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(path, s).unwrap();
}

fn field(line: &str, key: &str) -> Value {
    let v: Value = serde_json::from_str(line).unwrap();
    v[key].clone()
}

#[test]
fn sha256_fips_vectors() {
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn known_line_hash() {
    // printf '%s' '{"seq":1,"ts":"2024-01-02T03:04:05.678901Z","prev":"0000000000000000000000000000000000000000000000000000000000000000","backend":"10.0.0.2:80","event":"backend_down"}' | sha256sum
    const HASH: &str = "309faaf18fc78d812010f376f8102e19c46ca3a4dd0ffbe1e06288919bffeb3e";
    let d = TempDir::new();
    let mut log = AuditLog::open(&d.file()).unwrap();
    // Keys in sorted order: the same line with or without serde_json's
    // preserve_order feature.
    let mut r = Map::new();
    r.insert("backend".into(), json!("10.0.0.2:80"));
    r.insert("event".into(), json!("backend_down"));
    log.append("2024-01-02T03:04:05.678901Z", r).unwrap();
    assert_eq!(log.last_hash(), HASH);
    assert_eq!(
        std::fs::read_to_string(d.file()).unwrap(),
        format!(
            "{{\"seq\":1,\"ts\":\"2024-01-02T03:04:05.678901Z\",\"prev\":\"{GENESIS_PREV}\",\
             \"backend\":\"10.0.0.2:80\",\"event\":\"backend_down\",\"hash\":\"{HASH}\"}}\n"
        )
    );
    assert_eq!(verify(&d.file()), Ok(1));
}

#[test]
fn append_three_and_verify() {
    let d = TempDir::new();
    let l = three(&d.file());
    assert_eq!(l.len(), 3);
    assert_eq!(verify(&d.file()), Ok(3));
    assert_eq!(field(&l[0], "seq"), json!(1));
    assert_eq!(field(&l[0], "prev"), json!(GENESIS_PREV));
    assert_eq!(field(&l[1], "prev"), field(&l[0], "hash"));
    assert_eq!(field(&l[2], "prev"), field(&l[1], "hash"));
    assert!(l[0].starts_with("{\"seq\":1,\"ts\":\"2024-01-02T03:04:00.000001Z\",\"prev\":\""));
    assert_eq!(field(&l[1], "backend"), json!("beta"));
    // verify_reader on the same bytes.
    let bytes = std::fs::read(d.file()).unwrap();
    assert_eq!(verify_reader(&bytes[..]), Ok(3));
    assert_eq!(verify_reader(&b""[..]), Ok(0));
}

#[test]
fn empty_record() {
    let d = TempDir::new();
    let mut log = AuditLog::open(&d.file()).unwrap();
    log.append(&ts(1), Map::new()).unwrap();
    log.append(&ts(2), Map::new()).unwrap();
    assert_eq!(verify(&d.file()), Ok(2));
}

#[test]
fn reopen_continues_chain() {
    let d = TempDir::new();
    let l = three(&d.file());
    let mut log = AuditLog::open(&d.file()).unwrap();
    assert_eq!(log.next_seq(), 4);
    assert_eq!(json!(log.last_hash()), field(&l[2], "hash"));
    assert_eq!(log.append(&ts(9), rec(json!({"event": "x"}))).unwrap(), 4);
    drop(log);
    let l = lines(&d.file());
    assert_eq!(field(&l[3], "seq"), json!(4));
    assert_eq!(field(&l[3], "prev"), field(&l[2], "hash"));
    assert_eq!(verify(&d.file()), Ok(4));
}

#[test]
fn flipped_byte_in_record_names_that_line() {
    let d = TempDir::new();
    let mut l = three(&d.file());
    assert!(l[1].contains("\"beta\""));
    l[1] = l[1].replacen("\"beta\"", "\"bfta\"", 1);
    write_lines(&d.file(), &l);
    let e = verify(&d.file()).unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    assert!(e.reason.contains("hash mismatch"), "{e}");
    assert!(e.to_string().starts_with("line 2: "));
    // The daemon refuses to continue a tampered log.
    let err = AuditLog::open(&d.file()).unwrap_err();
    assert!(
        matches!(&err, AuditError::Broken { source, .. } if source.line == 2),
        "{err}"
    );
}

#[test]
fn every_single_byte_flip_is_detected() {
    let d = TempDir::new();
    three(&d.file());
    let orig = std::fs::read(d.file()).unwrap();
    for i in 0..orig.len() {
        let mut b = orig.clone();
        b[i] ^= 0x01;
        assert!(
            verify_reader(&b[..]).is_err(),
            "flip at byte {i} not detected"
        );
    }
}

#[test]
fn rehashed_edit_breaks_next_prev() {
    // An attacker who recomputes line 2's own hash still breaks line 3.
    let d = TempDir::new();
    let l = three(&d.file());
    let mut obj: Map<String, Value> = serde_json::from_str(&l[1]).unwrap();
    obj.insert("backend".into(), json!("evil"));
    let mut r = obj.clone();
    for k in RESERVED_KEYS {
        r.remove(k);
    }
    let (forged, _) = encode_line(
        2,
        obj["ts"].as_str().unwrap(),
        obj["prev"].as_str().unwrap(),
        &r,
    )
    .unwrap();
    write_lines(&d.file(), &[l[0].clone(), forged, l[2].clone()]);
    let e = verify(&d.file()).unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.reason.contains("prev hash mismatch"), "{e}");
}

#[test]
fn deleted_line_names_next() {
    let d = TempDir::new();
    let l = three(&d.file());
    write_lines(&d.file(), &[l[0].clone(), l[2].clone()]);
    let e = verify(&d.file()).unwrap_err();
    // Line numbers count the file's lines: the former line 3 (seq 3) is
    // now line 2.
    assert_eq!(e.line, 2, "{e}");
    assert!(
        e.reason
            .contains("seq not consecutive: expected 2, found 3"),
        "{e}"
    );
}

#[test]
fn deleted_first_line() {
    let d = TempDir::new();
    let l = three(&d.file());
    write_lines(&d.file(), &l[1..]);
    let e = verify(&d.file()).unwrap_err();
    assert_eq!(e.line, 1, "{e}");
}

#[test]
fn swapped_lines_detected() {
    let d = TempDir::new();
    let l = three(&d.file());
    write_lines(&d.file(), &[l[0].clone(), l[2].clone(), l[1].clone()]);
    let e = verify(&d.file()).unwrap_err();
    assert_eq!(e.line, 2, "{e}");
}

#[test]
fn edited_last_line_detected_by_own_hash() {
    let d = TempDir::new();
    let mut l = three(&d.file());
    l[2] = l[2].replacen("\"up\"", "\"UP\"", 1);
    write_lines(&d.file(), &l);
    let e = verify(&d.file()).unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.reason.contains("hash mismatch"), "{e}");
}

#[test]
fn truncated_last_line_is_an_error() {
    let d = TempDir::new();
    three(&d.file());
    let mut b = std::fs::read(d.file()).unwrap();
    b.truncate(b.len() - 10);
    std::fs::write(d.file(), &b).unwrap();
    let e = verify(&d.file()).unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.reason.contains("newline"), "{e}");
    let err = AuditLog::open(&d.file()).unwrap_err();
    assert!(
        matches!(&err, AuditError::Broken { source, .. } if source.line == 3),
        "{err}"
    );
    assert!(err.to_string().contains("line 3"), "{err}");
    // Not truncated or appended to.
    assert_eq!(std::fs::read(d.file()).unwrap(), b);

    // Only the newline missing: still an error.
    let d = TempDir::new();
    three(&d.file());
    let mut b = std::fs::read(d.file()).unwrap();
    b.pop();
    std::fs::write(d.file(), &b).unwrap();
    assert_eq!(verify(&d.file()).unwrap_err().line, 3);
}

#[test]
fn trailing_garbage_is_an_error() {
    let d = TempDir::new();
    let mut l = three(&d.file());
    l[1].push_str(" x");
    write_lines(&d.file(), &l);
    assert_eq!(verify(&d.file()).unwrap_err().line, 2);
    let mut l = lines(&d.file());
    l[1] = l[1].trim_end_matches(" x").to_string();
    l.push(String::new());
    write_lines(&d.file(), &l);
    let e = verify(&d.file()).unwrap_err();
    assert_eq!((e.line, e.reason.as_str()), (4, "empty line"));
}

#[test]
fn malformed_lines() {
    let ok = {
        let d = TempDir::new();
        three(&d.file())[0].clone()
    };
    let check = |line: &str, want: &str| {
        let input = format!("{line}\n");
        let e = verify_reader(input.as_bytes()).unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        assert!(e.reason.contains(want), "{line}: {e}");
    };
    check("not json", "bad JSON");
    check("[1,2]", "bad JSON");
    check("{\"ts\":\"x\"}", "missing field seq");
    check(&ok.replacen("\"seq\":1", "\"seq\":-1", 1), "seq is not");
    check(&ok.replacen("\"seq\":1,", "", 1), "missing field seq");
    check(&ok.replacen(":00.000001Z", ":00Z", 1), "field ts");
    check(&ok.replacen(GENESIS_PREV, "00", 1), "field prev");
    let no_hash = &ok[..ok.len() - HASH_SUFFIX_LEN];
    check(&format!("{no_hash}}}"), "missing field hash");
    check(&format!("{no_hash},\"hash\":\"AB\"}}"), "does not end with");
    // Fields out of order, even with a correct hash.
    let mut r = Map::new();
    r.insert("a".into(), json!(1));
    let (good, _) = encode_line(1, &ts(0), GENESIS_PREV, &r).unwrap();
    let reordered = good.replacen(
        &format!("\"seq\":1,\"ts\":\"{}\"", ts(0)),
        &format!("\"ts\":\"{}\",\"seq\":1", ts(0)),
        1,
    );
    check(&reordered, "not first");
    // A duplicate seq later in the line, correctly hashed: the parsed
    // (last) seq is not the one in front.
    let body = format!(
        "{{\"seq\":1,\"ts\":\"{}\",\"prev\":\"{GENESIS_PREV}\",\"seq\":2}}",
        ts(0)
    );
    let hash = sha256_hex(body.as_bytes());
    let dup = format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]);
    check(&dup, "not first");
    // Non-UTF-8 bytes: an error, not a panic.
    let e = verify_reader(&b"{\"seq\":\xff}\n"[..]).unwrap_err();
    assert_eq!(e.line, 1);
}

#[test]
fn first_line_must_start_chain() {
    let (good, _) = encode_line(2, &ts(0), GENESIS_PREV, &Map::new()).unwrap();
    let e = verify_reader(format!("{good}\n").as_bytes()).unwrap_err();
    assert!(e.reason.contains("expected 1, found 2"), "{e}");
    let other = "1".repeat(64);
    let (good, _) = encode_line(1, &ts(0), &other, &Map::new()).unwrap();
    let e = verify_reader(format!("{good}\n").as_bytes()).unwrap_err();
    assert!(e.reason.contains("prev hash mismatch"), "{e}");
}

#[test]
fn reserved_keys_rejected() {
    let d = TempDir::new();
    let mut log = AuditLog::open(&d.file()).unwrap();
    for k in RESERVED_KEYS {
        let mut r = Map::new();
        r.insert("event".into(), json!("x"));
        r.insert(k.into(), json!(1));
        let err = log.append(&ts(0), r).unwrap_err();
        assert!(
            matches!(&err, AuditError::ReservedKey(key) if key == k),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(d.file()).unwrap(), b"");
    assert_eq!(log.append(&ts(0), Map::new()).unwrap(), 1);
}

#[test]
fn bad_timestamp_rejected() {
    let d = TempDir::new();
    let mut log = AuditLog::open(&d.file()).unwrap();
    for bad in [
        "",
        "2024-01-02T03:04:05Z",
        "2024-01-02T03:04:05.678901+00:00",
        "2024-13-02T03:04:05.678901Z",
        "2024-01-02 03:04:05.678901Z",
    ] {
        let err = log.append(bad, Map::new()).unwrap_err();
        assert!(matches!(err, AuditError::BadTimestamp(_)), "{bad}: {err}");
    }
    assert_eq!(log.next_seq(), 1);
}

#[test]
fn file_mode_0600_and_dir_0700() {
    let d = TempDir::new();
    let path = d.0.join("new").join("sub").join("audit.log");
    let mut log = AuditLog::open(&path).unwrap();
    log.append(&ts(0), Map::new()).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&d.0.join("new")), 0o700);
}

#[test]
fn second_open_is_locked_out() {
    let d = TempDir::new();
    let log = AuditLog::open(&d.file()).unwrap();
    let err = AuditLog::open(&d.file()).unwrap_err();
    assert!(matches!(err, AuditError::Locked { .. }), "{err}");
    drop(log);
    AuditLog::open(&d.file()).unwrap();
}

#[test]
fn overlong_line_is_rejected_without_reading_it_all() {
    let d = TempDir::new();
    let ok = three(&d.file());
    // A 3 MiB line without a newline after a good first line.
    let mut b = format!("{}\n", ok[0]).into_bytes();
    b.extend(std::iter::repeat_n(b'a', 3 << 20));
    std::fs::write(d.file(), &b).unwrap();
    let e = verify(&d.file()).unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    assert!(e.reason.contains("longer than"), "{e}");
    // With a newline: same.
    b.push(b'\n');
    std::fs::write(d.file(), &b).unwrap();
    assert_eq!(verify(&d.file()).unwrap_err().line, 2);
    assert!(matches!(
        AuditLog::open(&d.file()).unwrap_err(),
        AuditError::Broken { source, .. } if source.line == 2
    ));

    // A reader that never ends: verification stops after the limit.
    struct Endless;
    impl io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(b'{');
            Ok(buf.len())
        }
    }
    let e = verify_reader(BufReader::new(Endless)).unwrap_err();
    assert_eq!(e.line, 1);

    // append refuses a record that would make an unverifiable line.
    let d = TempDir::new();
    let mut log = AuditLog::open(&d.file()).unwrap();
    let big = rec(json!({"blob": "x".repeat(MAX_LINE_LEN)}));
    let err = log.append(&ts(0), big).unwrap_err();
    assert!(matches!(err, AuditError::RecordTooLarge { .. }), "{err}");
    assert_eq!(std::fs::read(d.file()).unwrap(), b"");
}

#[test]
fn record_values_round_trip() {
    let d = TempDir::new();
    let mut log = AuditLog::open(&d.file()).unwrap();
    let r = rec(json!({
        "quote\"key": "new\nline \u{1F600} \\ \u{0}",
        "nested": {"a": [1, 2.5, null, true]},
        "neg": -3,
    }));
    log.append(&ts(0), r.clone()).unwrap();
    drop(log);
    assert_eq!(verify(&d.file()), Ok(1));
    let l = lines(&d.file());
    assert_eq!(l.len(), 1, "a value's newline must be escaped");
    let mut got: Map<String, Value> = serde_json::from_str(&l[0]).unwrap();
    for k in RESERVED_KEYS {
        got.remove(k);
    }
    assert_eq!(got, r);
}

#[test]
fn verify_missing_file() {
    let d = TempDir::new();
    let e = verify(&d.0.join("nope")).unwrap_err();
    assert_eq!(e.line, 0);
    assert!(e.to_string().starts_with("cannot open"), "{e}");
}
