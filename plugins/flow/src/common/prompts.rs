//! Prompts a model has encoded, kept with its text encoders: the host asks again for each hires
//! pass (its cache keys on the pass's size, which SDXL conditions on and the flow models do
//! not), and T5-XXL takes seconds a prompt. Dropped with the text encoders.
use std::cell::RefCell;
use std::collections::HashMap;

use anyhow::Result;
use tch::Tensor;

/// Most prompts kept (prompt editing gives a pass several); past it the cache starts over. A
/// Flux dev prompt is 512 × 4096 values (4 MiB in bf16) on the device, kept while the model is.
const MOST: usize = 8;

/// A prompt's `(context, pooled)` by key (the prompt, and what else changes its encoding).
#[derive(Default)]
pub struct EncodedPrompts(RefCell<HashMap<String, (Tensor, Tensor)>>);

impl EncodedPrompts {
    /// The kept encoding of `key`, or `encode()`'s, kept.
    pub fn get_or(
        &self,
        key: String,
        encode: impl FnOnce() -> Result<(Tensor, Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        if let Some((c, p)) = self.0.borrow().get(&key) {
            return Ok((c.shallow_clone(), p.shallow_clone()));
        }
        let (c, p) = encode()?;
        let mut kept = self.0.borrow_mut();
        if kept.len() >= MOST {
            kept.clear();
        }
        kept.insert(key, (c.shallow_clone(), p.shallow_clone()));
        Ok((c, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_is_encoded_once_and_the_cache_is_bounded() {
        let cache = EncodedPrompts::default();
        let calls = std::cell::Cell::new(0);
        let encode = |v: f64| {
            calls.set(calls.get() + 1);
            Ok((Tensor::from(v), Tensor::from(-v)))
        };
        let (a, _) = cache.get_or("a".into(), || encode(1.0)).unwrap();
        let (b, _) = cache.get_or("a".into(), || encode(2.0)).unwrap();
        assert_eq!(
            (f64::try_from(&a).unwrap(), f64::try_from(&b).unwrap()),
            (1.0, 1.0)
        );
        assert_eq!(calls.get(), 1);
        for i in 0..MOST {
            let _ = cache.get_or(format!("p{i}"), || encode(0.0)).unwrap();
        }
        assert!(cache.0.borrow().len() <= MOST);
    }
}
