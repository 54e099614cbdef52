//! An incrementally written WAV file (RIFF, 16-bit PCM).
//!
//! The header's two sizes are rewritten at every [`WavWriter::sync`] (the recorder does so
//! once a second), so a crash leaves a file whose header covers everything up to the last
//! sync: players read it, and at most the last second is missing.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

const HEADER_LEN: u64 = 44;
/// RIFF sizes are 32-bit: the data chunk stops short of 4 GiB.
const MAX_DATA: u64 = u32::MAX as u64 - HEADER_LEN;

/// Bytes gathered before they are written out (a write system call per 64 KiB).
const BUFFER: usize = 64 * 1024;

/// A WAV file being written.
#[derive(Debug)]
pub struct WavWriter {
    file: File,
    /// Little-endian samples not yet written to the file.
    buffer: Vec<u8>,
    channels: u16,
    data_bytes: u64,
}

impl WavWriter {
    /// Creates `path` (which must not exist) with a header for `channels` at `rate` Hz.
    pub fn create(path: &Path, channels: u16, rate: u32) -> io::Result<Self> {
        let file = File::options().write(true).create_new(true).open(path)?;
        let mut writer = Self {
            file,
            buffer: Vec::with_capacity(BUFFER),
            channels,
            data_bytes: 0,
        };
        let block = channels * 2;
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(b"RIFF");
        header.extend_from_slice(&36u32.to_le_bytes());
        header.extend_from_slice(b"WAVEfmt ");
        header.extend_from_slice(&16u32.to_le_bytes());
        header.extend_from_slice(&1u16.to_le_bytes()); // PCM
        header.extend_from_slice(&channels.to_le_bytes());
        header.extend_from_slice(&rate.to_le_bytes());
        header.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        header.extend_from_slice(&block.to_le_bytes());
        header.extend_from_slice(&16u16.to_le_bytes());
        header.extend_from_slice(b"data");
        header.extend_from_slice(&0u32.to_le_bytes());
        writer.file.write_all(&header)?;
        Ok(writer)
    }

    /// Appends interleaved samples (a whole number of frames). Fails at the 4 GiB limit.
    pub fn write(&mut self, samples: &[i16]) -> io::Result<()> {
        debug_assert_eq!(samples.len() % usize::from(self.channels), 0);
        let bytes = samples.len() as u64 * 2;
        if self.data_bytes + bytes > MAX_DATA {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "WAV files stop at 4 GiB",
            ));
        }
        let start = self.buffer.len();
        self.buffer.resize(start + samples.len() * 2, 0);
        for (slot, sample) in self.buffer[start..].chunks_exact_mut(2).zip(samples) {
            slot.copy_from_slice(&sample.to_le_bytes());
        }
        self.data_bytes += bytes;
        if self.buffer.len() >= BUFFER {
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes the buffered samples to the end of the file.
    fn write_out(&mut self) -> io::Result<()> {
        self.file.write_all(&self.buffer)?;
        self.buffer.clear();
        Ok(())
    }

    /// Bytes of audio written so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Writes out what is buffered and makes the header cover it.
    pub fn sync(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.file
            .write_all_at(&((36 + self.data_bytes) as u32).to_le_bytes(), 4)?;
        self.file
            .write_all_at(&(self.data_bytes as u32).to_le_bytes(), 40)
    }

    /// Closes a file whose writing failed: what was buffered is dropped and the header is
    /// made to cover the whole frames that reached the file, so it still plays.
    pub fn salvage(self) -> io::Result<u64> {
        let file = self.file;
        let block = u64::from(self.channels) * 2;
        let len = file.metadata()?.len();
        let data = (len.saturating_sub(HEADER_LEN) / block * block).min(MAX_DATA);
        file.set_len(HEADER_LEN + data)?;
        file.write_all_at(&((36 + data) as u32).to_le_bytes(), 4)?;
        file.write_all_at(&(data as u32).to_le_bytes(), 40)?;
        Ok(data)
    }

    /// Syncs and closes the file (salvaging it when the last write fails).
    pub fn finish(mut self) -> io::Result<u64> {
        if let Err(error) = self.sync() {
            let _ = self.salvage();
            return Err(error);
        }
        self.file.sync_data()?;
        Ok(self.data_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes_follow_every_sync_and_the_file_reads_back() {
        let dir = std::env::temp_dir().join(format!("wav-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.wav");
        let _ = std::fs::remove_file(&path);
        let mut wav = WavWriter::create(&path, 2, 16000).unwrap();
        wav.write(&[1, -1, 2, -2]).unwrap();
        wav.sync().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 8);
        assert_eq!(&bytes[40..44], &8u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &44u32.to_le_bytes());
        wav.write(&[3, -3]).unwrap();
        assert_eq!(wav.finish().unwrap(), 12);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[24..28], &16000u32.to_le_bytes());
        assert_eq!(&bytes[22..24], &2u16.to_le_bytes());
        assert_eq!(&bytes[40..44], &12u32.to_le_bytes());
        assert_eq!(&bytes[52..56], &[3, 0, 0xfd, 0xff]);
        // Never overwrites an existing recording.
        assert!(WavWriter::create(&path, 1, 8000).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
