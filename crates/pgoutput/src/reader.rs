//! Bounds-checked, zero-copy reads of big-endian protocol fields from one message buffer.
//!
//! Every read checks the remaining length first and returns [`DecodeError::Truncated`] instead of panicking.

use bytes::Bytes;

use crate::{DecodeError, Lsn};

/// A cursor over one pgoutput message.
pub(crate) struct Reader {
    buf: Bytes,
    message: &'static str,
}

impl Reader {
    /// Reads `buf`, naming `message` in errors.
    pub(crate) fn new(buf: Bytes, message: &'static str) -> Self {
        Reader { buf, message }
    }

    /// Takes the next `n` bytes as a slice of the input.
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated { message: self.message, needed: n, available: self.buf.len() });
        }
        Ok(self.buf.split_to(n))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let truncated = DecodeError::Truncated { message: self.message, needed: N, available: self.buf.len() };
        let array = self.buf.get(..N).and_then(|bytes| <[u8; N]>::try_from(bytes).ok()).ok_or(truncated)?;
        self.take(N)?;
        Ok(array)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub(crate) fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array()?)))
    }

    /// Reads a NUL-terminated UTF-8 string.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or(DecodeError::MissingNul)?;
        let text = self.take(end)?;
        self.take(1)?;
        String::from_utf8(text.to_vec()).map_err(|err| DecodeError::InvalidUtf8 {
            message: self.message,
            field,
            valid_up_to: err.utf8_error().valid_up_to(),
        })
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Names the message in later errors (once its tag is known).
    pub(crate) fn rename(&mut self, message: &'static str) {
        self.message = message;
    }

    /// The message name used in errors.
    pub(crate) fn message(&self) -> &'static str {
        self.message
    }

    /// Fails unless the whole message was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes { message: self.message, count: self.buf.len() })
        }
    }
}
