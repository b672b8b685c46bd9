//! The tap's relaying, splitting and printing, driven through in-memory streams.

use super::*;
use bytes::BytesMut;
use serde_json::{Value, json};
use tokio_util::codec::Encoder;
use wsmq_ipc_proto::{Hello, IpcCodec, PROTOCOL_VERSION, ReplySeq, ToBridge, ToGateway};

fn frames(msgs: Vec<ToBridge>) -> Vec<u8> {
    let mut codec = IpcCodec::<ToGateway, ToBridge>::new();
    let mut buf = BytesMut::new();
    for m in msgs {
        codec.encode(m, &mut buf).expect("encodes");
    }
    buf.to_vec()
}

fn taken(n: u64) -> ToBridge {
    ToBridge::Taken { reply: ReplySeq(n) }
}

fn drain(rx: &mut mpsc::Receiver<Record>) -> Vec<Record> {
    let mut out = Vec::new();
    while let Ok(r) = rx.try_recv() {
        out.push(r);
    }
    out
}

fn json_line(record: &Record) -> Value {
    serde_json::from_str(&record_line(record).to_json()).expect("JSON")
}

#[test]
fn frames_split_across_reads_are_offered_whole_and_in_order() {
    let (queue, mut rx) = PrintQueue::new(16, 1 << 20);
    let mut observer = Observer::new(1, Direction::ToBridge, queue);
    let bytes = frames(vec![
        ToBridge::Hello(Hello {
            version: PROTOCOL_VERSION,
            peer: "gw".into(),
        }),
        taken(1),
    ]);
    for piece in bytes.chunks(3) {
        observer.observe(piece);
    }
    observer.end();
    let lines: Vec<Value> = drain(&mut rx).iter().map(json_line).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["dir"], "gateway->bridge");
    assert_eq!(lines[0]["conn"], 1);
    assert_eq!(lines[0]["len"], 5);
    assert_eq!(lines[0]["msg"]["Hello"]["peer"], "gw");
    assert_eq!(lines[1]["msg"], json!({"Taken": {"reply": 1}}));
    assert!(lines[0]["time"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[test]
fn a_full_print_queue_skips_frames_without_waiting_and_counts_them() {
    let (queue, mut rx) = PrintQueue::new(2, 1 << 20);
    let mut observer = Observer::new(1, Direction::ToBridge, queue);
    // Five frames into a queue of two: offering never blocks, three are skipped.
    observer.observe(&frames((1..=5).map(taken).collect()));
    assert_eq!(observer.skipped_total, 3);
    let first = drain(&mut rx);
    assert_eq!(first.len(), 2);
    // The next frame that fits marks the gap; the reporter's counter has every skip.
    observer.observe(&frames(vec![taken(6)]));
    let next = drain(&mut rx);
    assert_eq!(next.len(), 1);
    let line = json_line(&next[0]);
    assert_eq!(line["skipped_before"], 3);
    assert_eq!(line["msg"], json!({"Taken": {"reply": 6}}));
    assert_eq!(observer.queue.skipped.load(Ordering::Relaxed), 3);
    assert!(json_line(&first[1]).get("skipped_before").is_none());
}

#[test]
fn the_byte_budget_bounds_the_queue_and_comes_back_once_printed() {
    let (queue, mut rx) = PrintQueue::new(100, 2 * (RECORD_OVERHEAD + 3));
    let mut observer = Observer::new(1, Direction::ToBridge, queue);
    // A Taken frame costs its 2-byte body plus the overhead: two fit, the third is skipped.
    observer.observe(&frames((1..=3).map(taken).collect()));
    assert_eq!(observer.skipped_total, 1);
    // Printing the queued records (here: dropping them) gives their bytes back.
    assert_eq!(drain(&mut rx).len(), 2);
    observer.observe(&frames(vec![taken(4), taken(5)]));
    assert_eq!(observer.skipped_total, 1);
    assert_eq!(drain(&mut rx).len(), 2);
}

#[test]
fn the_printer_writes_one_line_per_frame_until_the_relays_are_gone() {
    let (queue, rx) = PrintQueue::new(16, 1 << 20);
    let mut observer = Observer::new(1, Direction::ToBridge, queue);
    observer.observe(&frames(vec![taken(1), taken(2)]));
    drop(observer);
    let mut out = Vec::new();
    print_records(rx, &mut out).expect("prints");
    let text = String::from_utf8(out).expect("utf-8");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[1]["msg"], json!({"Taken": {"reply": 2}}));
}

#[test]
fn a_failing_stdout_ends_the_printer_with_its_error() {
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let (queue, rx) = PrintQueue::new(16, 1 << 20);
    let mut observer = Observer::new(1, Direction::ToBridge, queue);
    observer.observe(&frames(vec![taken(1)]));
    let err = print_records(rx, Closed).expect_err("stdout is closed");
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    // The relay is not held up by a printer that is gone: offers just fail.
    observer.observe(&frames(vec![taken(2)]));
    assert_eq!(observer.skipped_total, 1);
}

#[test]
fn an_undecodable_frame_is_printed_with_hex_and_later_frames_still_decode() {
    let (queue, mut rx) = PrintQueue::new(16, 1 << 20);
    let mut observer = Observer::new(2, Direction::ToBridge, queue);
    let mut bytes = vec![0, 0, 0, 1, 200];
    bytes.extend(frames(vec![taken(9)]));
    observer.observe(&bytes);
    let lines: Vec<Value> = drain(&mut rx).iter().map(json_line).collect();
    assert_eq!(lines[0]["hex"], "00000001c8");
    assert!(
        lines[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("relayed anyway"))
    );
    assert!(lines[0].get("msg").is_none());
    assert_eq!(lines[1]["msg"], json!({"Taken": {"reply": 9}}));
}

#[test]
fn an_impossible_length_stops_decoding_that_direction_only() {
    let (queue, mut rx) = PrintQueue::new(16, 1 << 20);
    let mut observer = Observer::new(1, Direction::ToGateway, queue);
    observer.observe(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    observer.observe(&[0, 0, 0, 0]);
    observer.end();
    let lines: Vec<Value> = drain(&mut rx).iter().map(json_line).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["len"], u64::from(u32::MAX));
    assert!(
        lines[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no longer decoded"))
    );
}

#[test]
fn a_stream_cut_mid_frame_is_reported_at_its_end() {
    let (queue, mut rx) = PrintQueue::new(16, 1 << 20);
    let mut observer = Observer::new(1, Direction::ToBridge, queue);
    let bytes = frames(vec![taken(1)]);
    observer.observe(&bytes[..bytes.len() - 1]);
    observer.end();
    let lines: Vec<Value> = drain(&mut rx).iter().map(json_line).collect();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("ends inside"))
    );
}

#[tokio::test]
async fn relay_passes_bytes_unchanged_and_passes_on_the_end() {
    let (queue, mut rx) = PrintQueue::new(16, 1 << 20);
    let mut observer = Observer::new(1, Direction::ToBridge, queue);
    let bytes = frames(vec![taken(1), taken(2)]);
    let (mut writer, src) = tokio::io::duplex(7);
    let (dst, mut reader) = tokio::io::duplex(7);
    let input = bytes.clone();
    let feed = tokio::spawn(async move {
        writer.write_all(&input).await.expect("writes");
    });
    let collect = tokio::spawn(async move {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.expect("reads");
        got
    });
    let total = relay(src, dst, &mut observer).await.expect("relays");
    feed.await.expect("feeder");
    assert_eq!(total, bytes.len() as u64);
    assert_eq!(
        collect.await.expect("collector"),
        bytes,
        "bytes unchanged, then EOF"
    );
    assert_eq!(drain(&mut rx).len(), 2);
}
