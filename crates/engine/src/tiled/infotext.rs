//! The A1111 extension's infotext field `Tiled Diffusion` (its `p.extra_generation_params`,
//! a Python dict written with `str()`): `{'Method': 'MultiDiffusion', 'Latent tile width':
//! 96, 'Latent tile height': 96, 'Overlap': 48, 'Tile batch size': 4}`. Pass 1 writes it as
//! the extension does; a later pass behind its prefix (`Hires Tiled Diffusion`).
use super::{Method, Tiled};

/// The extension's names of the methods (its `Method` enum's values).
const MULTIDIFFUSION: &str = "MultiDiffusion";
const MIXTURE: &str = "Mixture of Diffusers";

impl Tiled {
    /// The field's value (as Python's `str()` of the extension's dict).
    pub fn infotext(&self) -> String {
        let method = match self.method {
            Method::MultiDiffusion => MULTIDIFFUSION,
            Method::Mixture => MIXTURE,
        };
        format!(
            "{{'Method': '{method}', 'Latent tile width': {t}, 'Latent tile height': {t}, 'Overlap': {}, 'Tile batch size': {}}}",
            self.overlap,
            self.batch,
            t = self.tile
        )
    }

    /// The table a field's value describes; what is not one of ours is named in the error
    /// (another method, tiles that are not square, a key this reader does not know).
    pub fn from_infotext(value: &str) -> Result<Tiled, String> {
        let inner = value
            .trim()
            .strip_prefix('{')
            .and_then(|v| v.strip_suffix('}'))
            .ok_or("not the extension's {'Method': ..., ...} dict")?;
        let mut t = Tiled::default();
        let (mut width, mut height) = (None, None);
        for item in inner.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, raw) = item
                .split_once(':')
                .ok_or_else(|| format!("`{item}` is not a 'key': value pair"))?;
            let (key, raw) = (unquote(key), unquote(raw));
            let number = || {
                raw.parse::<u32>()
                    .map_err(|_| format!("'{key}': {raw} is not a whole number"))
            };
            match key {
                "Method" => {
                    t.method = match raw {
                        MULTIDIFFUSION => Method::MultiDiffusion,
                        MIXTURE => Method::Mixture,
                        other => {
                            return Err(format!(
                                "method '{other}' is not MultiDiffusion or Mixture of Diffusers"
                            ))
                        }
                    }
                }
                "Latent tile width" | "Tile tile width" => width = Some(number()?),
                "Latent tile height" | "Tile tile height" => height = Some(number()?),
                "Overlap" | "Tile Overlap" => t.overlap = number()?,
                "Tile batch size" => t.batch = number()?,
                other => {
                    return Err(format!(
                        "'{other}' has no profile key (only grid tiles of one size are read)"
                    ))
                }
            }
        }
        t.tile = match (width, height) {
            (Some(w), Some(h)) if w != h => {
                return Err(format!(
                    "tiles of {w}x{h} latent cells: hiresfix's tiles are square (tile = N)"
                ))
            }
            (w, h) => w.or(h).unwrap_or(t.tile),
        };
        t.checked()
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extensions_field_round_trips() {
        let t = Tiled {
            method: Method::Mixture,
            tile: 64,
            overlap: 16,
            batch: 2,
        };
        let text = t.infotext();
        assert_eq!(text, "{'Method': 'Mixture of Diffusers', 'Latent tile width': 64, 'Latent tile height': 64, 'Overlap': 16, 'Tile batch size': 2}");
        assert_eq!(Tiled::from_infotext(&text), Ok(t));
    }

    #[test]
    fn what_a_profile_cannot_hold_is_named() {
        let e = |v: &str| Tiled::from_infotext(v).unwrap_err();
        assert!(e("{'Method': 'SpotDiffusion'}").contains("'SpotDiffusion'"));
        assert!(e("{'Latent tile width': 96, 'Latent tile height': 64}").contains("square"));
        assert!(e("{'Keep input size': True}").contains("'Keep input size' has no profile key"));
        assert!(e("96").contains("not the extension's"));
    }
}
