//! Bodies streamed through, frame by frame (never a whole body in memory),
//! with their bytes counted; and the response body that finishes its
//! request's record when it ends, however it ends.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A request body on its way upstream: the client's, counted.
pub struct OutBody {
    inner: Incoming,
    bytes: Arc<AtomicU64>,
}

impl OutBody {
    pub fn new(inner: Incoming, bytes: Arc<AtomicU64>) -> Self {
        Self { inner, bytes }
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What runs once when a response body ends: its record, and the upstream
/// connection going back to the pool.
pub trait Finish: Send + 'static {
    /// `bytes`: the response body's bytes sent to the client; `error`: why
    /// it ended early, if it did.
    fn finish(self: Box<Self>, bytes: u64, error: Option<String>);
}

/// A response body: the upstream's, streamed and counted, or one of ours
/// (a refusal's).
pub enum InBody {
    Upstream {
        inner: Incoming,
        bytes: u64,
        finish: Option<Box<dyn Finish>>,
    },
    Ours(Full<Bytes>),
}

impl InBody {
    pub fn upstream(inner: Incoming, finish: Box<dyn Finish>) -> Self {
        Self::Upstream {
            inner,
            bytes: 0,
            finish: Some(finish),
        }
    }

    pub fn ours(text: impl Into<Bytes>) -> Self {
        Self::Ours(Full::new(text.into()))
    }
}

impl Body for InBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Ours(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Self::Upstream {
                inner,
                bytes,
                finish,
            } => {
                let polled = Pin::new(inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            *bytes += data.len() as u64;
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(f) = finish.take() {
                            f.finish(*bytes, None);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        if let Some(f) = finish.take() {
                            f.finish(*bytes, Some(format!("upstream: {e}")));
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Ours(full) => full.is_end_stream(),
            Self::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Ours(full) => full.size_hint(),
            Self::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for InBody {
    fn drop(&mut self) {
        if let Self::Upstream {
            inner,
            bytes,
            finish,
        } = self
        {
            if let Some(f) = finish.take() {
                let error = (!inner.is_end_stream())
                    .then(|| "client went away before the response ended".to_owned());
                f.finish(*bytes, error);
            }
        }
    }
}
