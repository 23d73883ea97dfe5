//! The hand-off from the proxy to the audit writer thread: a queue that
//! wakes the writer only for what someone waits on.
//!
//! A durable append (a connection waiting for its "allowed" record) wakes
//! the writer at once. A record nobody waits for (a close, a completed
//! request, a refusal) does not, while the writer is busy: it is taken with
//! the next batch the writer wakes for, and a busy writer looks again within
//! [`LAZY`] anyway. Only an idle writer (nothing came during its last
//! [`LAZY`]) sleeps longer, and is woken by the first record, which it
//! takes at once. Under a
//! new-connection load this takes about one wake-up (two context switches
//! and a futex call) and one `write` per connection off the path: each
//! close used to wake the writer for a batch of its own.

use std::{
    mem,
    sync::{Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// Longest a message nobody waits for stays in the queue.
pub const LAZY: Duration = Duration::from_millis(10);

/// What the writer takes when it wakes.
pub enum Taken<T> {
    /// Messages, oldest first (possibly none: a timeout).
    Messages(Vec<T>),
    /// Every sender is gone and the queue is empty.
    Closed,
}

#[derive(Debug)]
struct State<T> {
    messages: Vec<T>,
    /// A message someone waits for is queued.
    urgent: bool,
    /// When the oldest message nobody waits for was queued.
    oldest_lazy: Option<Instant>,
    /// How the writer sleeps on `wake`, if it does.
    waiting: Waiting,
    /// The writer's last take had messages: it is busy.
    busy: bool,
    /// The writer is gone: sends fail.
    writer_gone: bool,
    /// The proxy's handle is gone: nothing more will come.
    hung_up: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    No,
    /// Busy: until something urgent comes, or within [`LAZY`].
    Busy,
    /// Idle: the first message of any kind wakes it.
    Idle,
}

/// A queue with many senders and one receiver (the writer thread).
pub struct Queue<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
}

/// The writer stopped; the message was not queued.
#[derive(Debug)]
pub struct WriterGone;

impl<T> Queue<T> {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                messages: Vec::new(),
                urgent: false,
                oldest_lazy: None,
                waiting: Waiting::No,
                busy: false,
                writer_gone: false,
                hung_up: false,
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `message`; wakes the writer if `urgent` (someone waits for it).
    pub fn send(&self, message: T, urgent: bool) -> Result<(), WriterGone> {
        let mut state = self.lock();
        if state.writer_gone {
            return Err(WriterGone);
        }
        state.messages.push(message);
        let wake = if urgent {
            state.urgent = true;
            state.waiting != Waiting::No
        } else {
            state.oldest_lazy.get_or_insert_with(Instant::now);
            state.waiting == Waiting::Idle
        };
        if wake {
            // One wake-up is enough: the senders after this one need not.
            state.waiting = Waiting::No;
            self.wake.notify_one();
        }
        Ok(())
    }

    /// No more messages will come: the writer takes what is left, then
    /// [`Taken::Closed`].
    pub fn hang_up(&self) {
        self.lock().hung_up = true;
        self.wake.notify_one();
    }

    /// The writer: waits until something urgent is queued, the oldest lazy
    /// message is [`LAZY`] old, or `timeout` passes, and takes everything.
    pub fn take(&self, timeout: Duration) -> Taken<T> {
        // An hour at most: a configured interval of years must not overflow.
        let deadline = Instant::now() + timeout.min(Duration::from_secs(3600));
        let mut state = self.lock();
        let mut busy = state.busy;
        loop {
            let now = Instant::now();
            let lazy_due = state.oldest_lazy.map(|at| at + LAZY);
            // Idle, it takes the first message at once: only a busy writer
            // has others coming to share its write.
            let idle_and_some = !busy && !state.messages.is_empty();
            if state.urgent
                || idle_and_some
                || lazy_due.is_some_and(|due| due <= now)
                || deadline <= now
            {
                break;
            }
            if state.hung_up {
                if state.messages.is_empty() {
                    return Taken::Closed;
                }
                break;
            }
            // Busy, it looks again within LAZY, so that a lazy message needs
            // no wake-up; idle, it sleeps until the deadline.
            let cap = if busy { now + LAZY } else { deadline };
            let until = lazy_due.map_or(cap, |due| due.min(cap)).min(deadline);
            state.waiting = if busy { Waiting::Busy } else { Waiting::Idle };
            state = self
                .wake
                .wait_timeout(state, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            state.waiting = Waiting::No;
            busy &= !state.messages.is_empty();
        }
        state.busy = !state.messages.is_empty();
        state.urgent = false;
        state.oldest_lazy = None;
        Taken::Messages(mem::take(&mut state.messages))
    }

    /// The writer is gone: later sends fail, and what is queued is dropped
    /// (so that whoever waits for it hears that it never will be written).
    pub fn close(&self) {
        let dropped = {
            let mut state = self.lock();
            state.writer_gone = true;
            mem::take(&mut state.messages)
        };
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, thread};

    use super::*;

    #[test]
    // What this shows is that a sleeping writer gets everything, in order;
    // that an urgent message wakes a busy writer sooner than LAZY is a
    // matter of time, which the tests do not assert.
    fn messages_reach_a_sleeping_writer_in_order() {
        let queue = Arc::new(Queue::new());
        // The writer is idle (a long sleep) when these come.
        let writer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || {
                let mut taken = Vec::new();
                while taken.len() < 3 {
                    let Taken::Messages(m) = queue.take(Duration::from_secs(30)) else {
                        panic!("closed");
                    };
                    taken.extend(m);
                }
                taken
            })
        };
        queue.send(1, false).unwrap();
        queue.send(2, false).unwrap();
        queue.send(3, true).unwrap();
        // Well within the 30 s the writer would otherwise sleep.
        assert_eq!(writer.join().unwrap(), [1, 2, 3]);
    }

    #[test]
    fn a_lazy_message_is_taken_within_lazy() {
        let queue = Queue::new();
        queue.send(1, false).unwrap();
        let Taken::Messages(taken) = queue.take(Duration::from_secs(30)) else {
            panic!("closed");
        };
        assert_eq!(taken, [1]);
    }

    #[test]
    fn a_hang_up_closes_once_empty_and_a_gone_writer_refuses() {
        let queue: Queue<u8> = Queue::new();
        assert!(matches!(
            queue.take(Duration::from_millis(1)),
            Taken::Messages(m) if m.is_empty()
        ));
        queue.send(1, false).unwrap();
        queue.hang_up();
        assert!(matches!(queue.take(Duration::from_secs(30)), Taken::Messages(m) if m == [1]));
        assert!(matches!(queue.take(Duration::from_secs(30)), Taken::Closed));
        queue.close();
        assert!(queue.send(1, true).is_err());
    }
}
