//! A pass's `tiled` key as the profile writes it: a table (always tiled) or `"auto"` (tiled
//! when the memory estimate says the whole-latent UNet call will not fit; decided once per
//! job by [`crate::auto_tiled`], which writes the table, or removes the key, in the resolved
//! profile so replay tiles the same way).
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Tiled;

/// `tiled = { ... }` or `tiled = "auto"`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TiledSetting {
    /// Tiled with these settings.
    Table(Tiled),
    /// Tiled with the defaults ([`Tiled::default`]) when the pass's UNet call would not fit.
    Auto,
}

impl TiledSetting {
    /// The profile's range rule.
    pub fn checked(self) -> Result<Self, String> {
        match self {
            TiledSetting::Table(t) => t.checked().map(TiledSetting::Table),
            TiledSetting::Auto => Ok(self),
        }
    }

    /// The table, once decided (`"auto"` is undecided: untiled until [`crate::auto_tiled`]
    /// runs).
    pub fn table(self) -> Option<Tiled> {
        match self {
            TiledSetting::Table(t) => Some(t),
            TiledSetting::Auto => None,
        }
    }
}

impl fmt::Display for TiledSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TiledSetting::Table(t) => t.fmt(f),
            TiledSetting::Auto => f.write_str("\"auto\""),
        }
    }
}

impl Serialize for TiledSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TiledSetting::Table(t) => t.serialize(s),
            TiledSetting::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for TiledSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = TiledSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\" or a table such as { method = \"multidiffusion\", tile = 96, overlap = 48, batch = 4 }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TiledSetting, E> {
                match v {
                    "auto" => Ok(TiledSetting::Auto),
                    other => Err(E::custom(format!(
                        "tiled = \"{other}\": the only word is \"auto\" (tile when the pass would not fit); otherwise a table, e.g. tiled = {{ tile = 96, overlap = 48 }}"
                    ))),
                }
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<TiledSetting, M::Error> {
                Tiled::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(TiledSetting::Table)
            }
        }
        d.deserialize_any(Either)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize, Debug)]
    struct P {
        tiled: TiledSetting,
    }

    #[test]
    fn auto_and_tables_read_and_write_back() {
        let p: P = toml::from_str("tiled = \"auto\"").unwrap();
        assert_eq!(p.tiled, TiledSetting::Auto);
        assert_eq!(toml::to_string(&p).unwrap().trim(), "tiled = \"auto\"");
        let p: P = toml::from_str("tiled = { method = \"mixture\", tile = 64 }").unwrap();
        let table = p.tiled.table().unwrap();
        assert_eq!(
            (table.method, table.tile, table.overlap),
            (super::super::Method::Mixture, 64, 48)
        );
        let back: P = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back.tiled, p.tiled);
    }

    #[test]
    fn other_words_and_unknown_keys_are_named() {
        let e = toml::from_str::<P>("tiled = \"yes\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("the only word is \"auto\""), "{e}");
        let e = toml::from_str::<P>("tiled = { tyle = 64 }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `tyle`"), "{e}");
    }
}
