//! Parsing allocates a fixed number of times, not once per header: a counting global
//! allocator watches `Message::parse` of a 1 KB INVITE with 20 headers and of one with 40.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use sip_wire::Message;

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Only the measuring thread counts (the test harness's own threads allocate too).
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn invite(extra_headers: usize) -> Bytes {
    let mut s = String::from("INVITE sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\nMax-Forwards: 70\r\nTo: Bob <sip:bob@biloxi.example.com>\r\nFrom: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\nCall-ID: a84b4c76e66710@pc33.atlanta.example.com\r\nCSeq: 314159 INVITE\r\nContact: <sip:alice@pc33.atlanta.example.com>\r\n");
    for i in 0..extra_headers {
        s.push_str(&format!(
            "X-Extra-{i}: value number {i} for the allocation test\r\n"
        ));
    }
    s.push_str("Content-Type: application/sdp\r\nContent-Length: 0\r\n\r\n");
    Bytes::from(s)
}

fn allocs_for(buf: Bytes) -> usize {
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let m = Message::parse(buf).unwrap();
    COUNTING.with(|c| c.set(false));
    let n = ALLOCS.load(Ordering::Relaxed) - before;
    drop(m);
    n
}

#[test]
fn parsing_does_not_allocate_per_header() {
    let small = invite(10);
    assert!(
        small.len() > 900 && small.len() < 1200,
        "about 1 KB: {}",
        small.len()
    );
    let _ = allocs_for(invite(1)); // warm up lazily initialised statics
    let a = allocs_for(small);
    let b = allocs_for(invite(14));
    assert!(a <= 2, "a 1 KB INVITE took {a} allocations");
    assert_eq!(a, b, "allocations must not grow with the header count");
}
