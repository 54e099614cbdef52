//! Identifiers that must not be guessable: tags, branches and Call-IDs.
//!
//! RFC 3261 section 19.3 asks for at least 32 random bits in a tag and a globally unique
//! Call-ID; a blind attacker who can guess the Call-ID and tags of a dialog can forge
//! in-dialog requests (a BYE that hangs up someone else's call). Every identifier here comes
//! from a ChaCha12 generator seeded from the operating system ([`Ids::from_os`]); tests seed
//! it themselves ([`Ids::from_seed`]) so a run can be repeated exactly. The generator is an
//! input of the core, not read inside it.

use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::sip::SipCallId;

/// The magic cookie that opens every RFC 3261 branch (section 8.1.1.7).
pub(crate) const BRANCH_COOKIE: &str = "z9hG4bK";

/// A source of random identifiers.
pub(crate) struct Ids {
    rng: StdRng,
}

impl Ids {
    /// Seeded from the operating system's random source.
    pub(crate) fn from_os() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(Self::from_seed(seed))
    }

    /// A repeatable sequence, for tests and simulations.
    pub(crate) fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            rng: StdRng::from_seed(seed),
        }
    }

    fn hex(&mut self, words: usize) -> String {
        let mut text = String::with_capacity(words * 16);
        for _ in 0..words {
            let _ = write!(text, "{:016x}", self.rng.next_u64());
        }
        text
    }

    /// A uniformly random duration in `[low, high)` (RFC 3261 section 14.1's glare delays).
    pub(crate) fn delay(
        &mut self,
        low: std::time::Duration,
        high: std::time::Duration,
    ) -> std::time::Duration {
        let span = high.saturating_sub(low).as_millis().max(1) as u64;
        low + std::time::Duration::from_millis(self.rng.next_u64() % span)
    }

    /// The first RSeq of a call's reliable provisional responses (RFC 3262 section 3: random,
    /// between 1 and 2^31 - 1).
    pub(crate) fn rseq(&mut self) -> u32 {
        (self.rng.next_u32() >> 1).max(1)
    }

    /// A From/To tag: 64 random bits.
    pub(crate) fn tag(&mut self) -> String {
        self.hex(1)
    }

    /// A Via branch: the RFC 3261 cookie and 128 random bits.
    pub(crate) fn branch(&mut self) -> String {
        format!("{BRANCH_COOKIE}{}", self.hex(2))
    }

    /// A Call-ID: 128 random bits at our host.
    pub(crate) fn call_id(&mut self, host: &str) -> SipCallId {
        SipCallId::new(&format!("{}@{host}", self.hex(2)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn identifiers_are_long_random_and_repeatable_from_a_seed() {
        let mut ids = Ids::from_seed([7; 32]);
        let tag = ids.tag();
        assert_eq!(tag.len(), 16, "64 bits, over the 32 RFC 3261 19.3 asks");
        let branch = ids.branch();
        assert!(branch.starts_with("z9hG4bK") && branch.len() == 7 + 32);
        let call_id = ids.call_id("192.0.2.1");
        assert!(call_id.as_str().ends_with("@192.0.2.1"));
        let mut again = Ids::from_seed([7; 32]);
        assert_eq!(again.tag(), tag);
        assert_eq!(again.branch(), branch);
        let mut seen = HashSet::new();
        let mut os = Ids::from_os().unwrap();
        for _ in 0..10_000 {
            assert!(seen.insert(os.branch()), "a branch repeated");
        }
        assert_ne!(Ids::from_os().unwrap().tag(), Ids::from_os().unwrap().tag());
    }
}
