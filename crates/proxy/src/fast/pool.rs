//! Request and response buffers, per worker thread (each worker is one
//! thread running its own runtime): taken while a request is in flight,
//! given back when it ends.

use std::cell::RefCell;

const SIZE: usize = 16 * 1024;
/// Kept per worker; more are freed.
const KEEP: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn take() -> Vec<u8> {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(SIZE))
}

pub(super) fn give(mut v: Vec<u8>) {
    if v.capacity() == 0 || v.capacity() > 4 * SIZE {
        return;
    }
    v.clear();
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEEP {
            f.push(v);
        }
    });
}

/// Room for at least one more read.
pub(super) fn room(v: &mut Vec<u8>) {
    if v.capacity() - v.len() < 1024 {
        v.reserve(SIZE);
    }
}
