use std::io::{self, Read, Seek, SeekFrom, Write};

/// `Read + Write + Seek` over the byte range `[start, start + len)` of an underlying device.
///
/// Reads stop at the end of the range; writes past it fail with `WriteZero`-style errors
/// instead of spilling into the next partition.
#[derive(Debug)]
pub struct Window<F> {
    inner: F,
    start: u64,
    len: u64,
    pos: u64,
}

impl<F: Seek> Window<F> {
    /// All of `inner` (a file or a block device: its length is found by seeking to its end,
    /// which works for both).
    pub fn whole(mut inner: F) -> io::Result<Self> {
        let len = inner.seek(SeekFrom::End(0))?;
        Ok(Window::new(inner, 0, len))
    }

    pub fn new(inner: F, start: u64, len: u64) -> Self {
        Window {
            inner,
            start,
            len,
            pos: 0,
        }
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn into_inner(self) -> F {
        self.inner
    }
    pub fn get_mut(&mut self) -> &mut F {
        &mut self.inner
    }
}

impl<F: Read + Seek> Read for Window<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.len.saturating_sub(self.pos);
        if remaining == 0 {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(remaining) as usize;
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<F: Write + Seek> Write for Window<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let remaining = self.len.saturating_sub(self.pos);
        if remaining == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("write past the end of the partition ({} bytes)", self.len),
            ));
        }
        let n = (buf.len() as u64).min(remaining) as usize;
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.inner.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<F> Seek for Window<F> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn window_confines_io() {
        let mut w = Window::new(Cursor::new(vec![0u8; 100]), 10, 20);
        w.write_all(&[1u8; 20]).unwrap();
        assert!(w.write_all(&[2u8]).is_err());
        let inner = w.into_inner().into_inner();
        assert!(inner[..10].iter().all(|b| *b == 0));
        assert!(inner[10..30].iter().all(|b| *b == 1));
        assert!(inner[30..].iter().all(|b| *b == 0));

        let mut r = Window::new(Cursor::new((0u8..100).collect::<Vec<_>>()), 50, 5);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, vec![50, 51, 52, 53, 54]);
        r.seek(SeekFrom::End(-1)).unwrap();
        let mut one = [0u8];
        r.read_exact(&mut one).unwrap();
        assert_eq!(one[0], 54);
    }
}
