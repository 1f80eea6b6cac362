//! CRC-32 with the IEEE 802.3 polynomial, as Go's `crc32.ChecksumIEEE` (etcd's KV hash uses
//! it; snapshots use it for their checksum). `crc32fast` computes it with the CPU's carry-less
//! multiply where there is one.

/// A running CRC-32.
#[derive(Clone, Debug, Default)]
pub struct Crc32 {
    hasher: crc32fast::Hasher,
}

impl Crc32 {
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// The checksum of everything added so far.
    pub fn finish(&self) -> u32 {
        self.hasher.clone().finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::Crc32;

    #[test]
    fn known_value() {
        let mut crc = Crc32::default();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xCBF4_3926);
    }

    #[test]
    fn pieces_sum_to_the_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut whole = Crc32::default();
        whole.update(&data);
        let mut pieces = Crc32::default();
        for chunk in data.chunks(37) {
            pieces.update(chunk);
        }
        assert_eq!(pieces.finish(), whole.finish());
        // The same value as the bitwise definition of the polynomial.
        let mut state = 0xFFFF_FFFFu32;
        for &byte in &data {
            state ^= byte as u32;
            for _ in 0..8 {
                state = if state & 1 == 1 {
                    (state >> 1) ^ 0xEDB8_8320
                } else {
                    state >> 1
                };
            }
        }
        assert_eq!(whole.finish(), !state);
    }
}
