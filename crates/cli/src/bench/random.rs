//! A tiny pseudo-random generator for keys and values. Load generation needs speed and
//! spread, not cryptographic quality, and avoiding a dependency keeps builds small.

/// xorshift64* (Vigna, 2014).
#[derive(Debug, Clone)]
pub struct Random {
    state: u64,
}

impl Random {
    /// A generator from a seed; any seed works (zero is remapped).
    pub fn new(seed: u64) -> Random {
        // SplitMix64 finaliser spreads nearby seeds (client 0, 1, 2...) apart.
        let mut mixed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^= mixed >> 31;
        Random {
            state: if mixed == 0 { 1 } else { mixed },
        }
    }

    /// A seed that differs between runs and between callers.
    pub fn seed_from_clock(salt: u64) -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(0);
        nanos ^ salt.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound`; `bound` must not be zero.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "bound must be positive");
        // The modulo bias is irrelevant for key spreading.
        self.next_u64() % bound
    }

    /// `length` random bytes.
    pub fn bytes(&mut self, length: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(length + 8);
        while bytes.len() < length {
            bytes.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        bytes.truncate(length);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::Random;

    #[test]
    fn same_seed_same_sequence_and_bounds_hold() {
        let mut first = Random::new(7);
        let mut second = Random::new(7);
        for _ in 0..1000 {
            let value = first.below(10);
            assert_eq!(value, second.below(10));
            assert!(value < 10);
        }
        assert_eq!(first.bytes(13).len(), 13);
        assert_ne!(Random::new(1).next_u64(), Random::new(2).next_u64());
    }
}
