//! The container format of every metadata image file.
//!
//! ```text
//! offset 0   magic        8 bytes, "CRIURS" + 2 bytes naming the kind
//! offset 8   version      u32 LE, FORMAT_VERSION
//! offset 12  records      repeated until end of file:
//!              len        u32 LE, payload length in bytes (<= MAX_RECORD)
//!              crc        u32 LE, crc32c of the payload
//!              payload    postcard encoding of one record
//! ```
//!
//! Readers check every length before allocating, the checksum before
//! decoding, and that the payload decodes to exactly one record. Errors name
//! the file and the byte offset. See docs/IMAGES.md.

use serde::{de::DeserializeOwned, Serialize};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Version of the image format written by this build.
pub const FORMAT_VERSION: u32 = 5;

/// Largest record payload accepted, in bytes (64 MiB).
pub const MAX_RECORD: usize = 64 << 20;

/// Size of the file header in bytes.
pub const HEADER_LEN: usize = 12;

/// What went wrong with an image file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Opening, reading, writing or syncing failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The image file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The file ends inside the header or a record.
    #[error("{path}: truncated at offset {offset} ({what} cut short); the image is incomplete, dump again")]
    Truncated {
        /// The image file.
        path: PathBuf,
        /// Byte offset where data is missing.
        offset: u64,
        /// What was expected there.
        what: &'static str,
    },
    /// The magic is not the one of this kind of image.
    #[error("{path}: not a {expected} image (bad magic at offset 0); is -D the directory criu dump wrote?")]
    BadMagic {
        /// The image file.
        path: PathBuf,
        /// The expected kind.
        expected: &'static str,
    },
    /// The format version is not one this build reads.
    #[error(
        "{path}: image format version {found} is not supported (this build reads {FORMAT_VERSION})"
    )]
    Version {
        /// The image file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
    },
    /// A record length is larger than [`MAX_RECORD`].
    #[error("{path}: record at offset {offset} claims {len} bytes, more than the limit; the image is damaged, dump again")]
    TooLarge {
        /// The image file.
        path: PathBuf,
        /// Offset of the record header.
        offset: u64,
        /// Claimed length.
        len: u64,
    },
    /// The payload's checksum is wrong.
    #[error(
        "{path}: checksum mismatch in record at offset {offset}; the image is damaged, dump again"
    )]
    Checksum {
        /// The image file.
        path: PathBuf,
        /// Offset of the record header.
        offset: u64,
    },
    /// The payload does not decode to a record.
    #[error(
        "{path}: corrupt record at offset {offset}: {detail}; the image is damaged, dump again"
    )]
    Corrupt {
        /// The image file.
        path: PathBuf,
        /// Offset of the record header.
        offset: u64,
        /// Decoder message.
        detail: String,
    },
    /// The file has the wrong number of records or an inconsistent value.
    #[error("{path}: {detail}")]
    Invalid {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl ImageError {
    /// Shorthand for an [`ImageError::Invalid`].
    pub fn invalid(path: &Path, detail: impl Into<String>) -> Self {
        ImageError::Invalid {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}

/// The kinds of metadata image, each with its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `inventory.img`
    Inventory,
    /// `pstree.img`
    Pstree,
    /// `core-PID.img`
    Core,
    /// `mm-PID.img`
    Mm,
    /// `fs-PID.img`
    Fs,
    /// `files-PID.img`
    Files,
    /// `pagemap-PID.img`
    Pagemap,
    /// `files.img`: the open file descriptions of the whole tree.
    FileTable,
}

impl Kind {
    /// The 8-byte magic at the start of the file.
    pub fn magic(self) -> [u8; 8] {
        let tag: &[u8; 2] = match self {
            Kind::Inventory => b"IN",
            Kind::Pstree => b"PS",
            Kind::Core => b"CO",
            Kind::Mm => b"MM",
            Kind::Fs => b"FS",
            Kind::Files => b"FI",
            Kind::Pagemap => b"PM",
            Kind::FileTable => b"FT",
        };
        let mut m = *b"CRIURS\0\0";
        m[6..].copy_from_slice(tag);
        m
    }

    /// Human name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Inventory => "inventory",
            Kind::Pstree => "pstree",
            Kind::Core => "core",
            Kind::Mm => "mm",
            Kind::Fs => "fs",
            Kind::Files => "files",
            Kind::Pagemap => "pagemap",
            Kind::FileTable => "file table",
        }
    }

    /// Recognise a magic.
    pub fn from_magic(m: &[u8]) -> Option<Kind> {
        [
            Kind::Inventory,
            Kind::Pstree,
            Kind::Core,
            Kind::Mm,
            Kind::Fs,
            Kind::Files,
            Kind::Pagemap,
            Kind::FileTable,
        ]
        .into_iter()
        .find(|k| k.magic() == m)
    }
}

/// Writes one metadata image: header, then records. Call [`finish`]
/// (which fsyncs) when done; dropping without it leaves an incomplete file.
///
/// [`finish`]: ImageWriter::finish
pub struct ImageWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl ImageWriter {
    /// Create (or truncate) `path` and write the header for `kind`.
    ///
    /// Errors: [`ImageError::Io`] naming the file.
    pub fn create(path: &Path, kind: Kind) -> Result<Self, ImageError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| ImageError::Io {
                path: path.to_path_buf(),
                op: "create",
                source,
            })?;
        let mut w = ImageWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        };
        let mut hdr = [0u8; HEADER_LEN];
        hdr[..8].copy_from_slice(&kind.magic());
        hdr[8..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        w.write_bytes(&hdr)?;
        Ok(w)
    }

    fn write_bytes(&mut self, b: &[u8]) -> Result<(), ImageError> {
        self.out.write_all(b).map_err(|source| ImageError::Io {
            path: self.path.clone(),
            op: "write",
            source,
        })
    }

    /// Append one record.
    ///
    /// Errors: [`ImageError::Io`]; [`ImageError::Invalid`] if the record is
    /// larger than [`MAX_RECORD`].
    pub fn record<T: Serialize>(&mut self, rec: &T) -> Result<(), ImageError> {
        let payload = postcard::to_stdvec(rec)
            .map_err(|e| ImageError::invalid(&self.path, format!("cannot encode record: {e}")))?;
        if payload.len() > MAX_RECORD {
            return Err(ImageError::invalid(&self.path, "record too large"));
        }
        let mut hdr = [0u8; 8];
        hdr[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        hdr[4..].copy_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        self.write_bytes(&hdr)?;
        self.write_bytes(&payload)
    }

    /// Flush and fsync the file.
    ///
    /// Errors: [`ImageError::Io`] (a full disk shows up here at the latest).
    pub fn finish(self) -> Result<(), ImageError> {
        let path = self.path;
        let file = self.out.into_inner().map_err(|e| ImageError::Io {
            path: path.clone(),
            op: "write",
            source: e.into_error(),
        })?;
        file.sync_all().map_err(|source| ImageError::Io {
            path,
            op: "fsync",
            source,
        })
    }
}

/// Write a whole image holding the given records and fsync it.
///
/// Errors: as [`ImageWriter`].
pub fn write_image<T: Serialize>(path: &Path, kind: Kind, recs: &[T]) -> Result<(), ImageError> {
    let mut w = ImageWriter::create(path, kind)?;
    for r in recs {
        w.record(r)?;
    }
    w.finish()
}

/// Read every record of an image of `kind`, validating as described in the
/// module docs. The whole file is read at once; metadata images are small.
///
/// Errors: any [`ImageError`], naming the file and offset.
pub fn read_image<T: DeserializeOwned>(path: &Path, kind: Kind) -> Result<Vec<T>, ImageError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            op: "open",
            source,
        })?;
    decode_image(path, kind, &data)
}

/// Like [`read_image`] on bytes already in memory (`path` only names them in
/// errors).
///
/// Errors: any [`ImageError`] but `Io`.
pub fn decode_image<T: DeserializeOwned>(
    path: &Path,
    kind: Kind,
    data: &[u8],
) -> Result<Vec<T>, ImageError> {
    check_header(path, kind, data)?;
    let mut out = Vec::new();
    for rec in raw_records(path, data)? {
        let (offset, payload) = rec;
        let (v, rest) =
            postcard::take_from_bytes::<T>(payload).map_err(|e| ImageError::Corrupt {
                path: path.to_path_buf(),
                offset,
                detail: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(ImageError::Corrupt {
                path: path.to_path_buf(),
                offset,
                detail: format!("{} trailing bytes after the record", rest.len()),
            });
        }
        out.push(v);
    }
    Ok(out)
}

/// Read an image that must hold exactly one record.
///
/// Errors: any [`ImageError`]; `Invalid` when the count is not one.
pub fn read_single<T: DeserializeOwned>(path: &Path, kind: Kind) -> Result<T, ImageError> {
    let mut v = read_image::<T>(path, kind)?;
    if v.len() != 1 {
        return Err(ImageError::invalid(
            path,
            format!("expected exactly one record, found {}", v.len()),
        ));
    }
    Ok(v.remove(0))
}

fn check_header(path: &Path, kind: Kind, data: &[u8]) -> Result<(), ImageError> {
    if data.len() < HEADER_LEN {
        if data.len() >= 8 && data[..8] != kind.magic() {
            return Err(ImageError::BadMagic {
                path: path.to_path_buf(),
                expected: kind.name(),
            });
        }
        return Err(ImageError::Truncated {
            path: path.to_path_buf(),
            offset: data.len() as u64,
            what: "file header",
        });
    }
    if data[..8] != kind.magic() {
        return Err(ImageError::BadMagic {
            path: path.to_path_buf(),
            expected: kind.name(),
        });
    }
    let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    if version != FORMAT_VERSION {
        return Err(ImageError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    Ok(())
}

/// Split the records of an image whose header was checked: each item is the
/// record header's offset and its checksum-verified payload.
fn raw_records<'a>(path: &Path, data: &'a [u8]) -> Result<Vec<(u64, &'a [u8])>, ImageError> {
    let mut out = Vec::new();
    let mut pos = HEADER_LEN;
    while pos < data.len() {
        let offset = pos as u64;
        if data.len() - pos < 8 {
            return Err(ImageError::Truncated {
                path: path.to_path_buf(),
                offset,
                what: "record header",
            });
        }
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            return Err(ImageError::TooLarge {
                path: path.to_path_buf(),
                offset,
                len: len as u64,
            });
        }
        let start = pos + 8;
        if data.len() - start < len {
            return Err(ImageError::Truncated {
                path: path.to_path_buf(),
                offset,
                what: "record payload",
            });
        }
        let payload = &data[start..start + len];
        if crc32c::crc32c(payload) != crc {
            return Err(ImageError::Checksum {
                path: path.to_path_buf(),
                offset,
            });
        }
        out.push((offset, payload));
        pos = start + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Rec {
        a: u64,
        s: String,
        v: Vec<u32>,
    }

    fn sample() -> Vec<Rec> {
        vec![
            Rec {
                a: 1,
                s: "one".into(),
                v: vec![1, 2, 3],
            },
            Rec {
                a: u64::MAX,
                s: "two".into(),
                v: vec![],
            },
        ]
    }

    fn written() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("core-1.img");
        write_image(&p, Kind::Core, &sample()).unwrap();
        let data = std::fs::read(&p).unwrap();
        (dir, p, data)
    }

    #[test]
    fn round_trip() {
        let (_d, p, _) = written();
        assert_eq!(read_image::<Rec>(&p, Kind::Core).unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_file() {
        let (_d, p, data) = written();
        for cut in 0..data.len() {
            // Cutting exactly between records yields a valid shorter file.
            match decode_image::<Rec>(&p, Kind::Core, &data[..cut]) {
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains("core-1.img"), "{msg}");
                    assert!(msg.contains("truncated"), "cut {cut}: {msg}");
                }
                Ok(v) => assert!(v.len() < 2 && (cut == HEADER_LEN || v.len() == 1)),
            }
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let (_d, p, data) = written();
        for i in 0..data.len() {
            let mut d = data.clone();
            d[i] ^= 0x20;
            let r = decode_image::<Rec>(&p, Kind::Core, &d);
            assert!(r.is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn wrong_kind_and_version() {
        let (_d, p, mut data) = written();
        let e = decode_image::<Rec>(&p, Kind::Mm, &data).unwrap_err();
        assert!(e.to_string().contains("not a mm image"), "{e}");
        data[8] = 9;
        let e = decode_image::<Rec>(&p, Kind::Core, &data).unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
    }

    #[test]
    fn huge_length_is_refused_before_allocating() {
        let (_d, p, mut data) = written();
        data[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = decode_image::<Rec>(&p, Kind::Core, &data).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
    }
}
