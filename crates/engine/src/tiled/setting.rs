//! A pass's `tiled` key as the profile writes it: a table (always tiled), or `"auto"` /
//! a table with `when = "auto"` (tiled, with the table's settings, when the memory estimate
//! says the whole-latent UNet call will not fit; decided once per job by
//! [`crate::auto_tiled`], which writes the plain table, or removes the key, in the resolved
//! profile so replay tiles the same way).
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Tiled;

/// `tiled = { ... }`, `tiled = "auto"` or `tiled = { when = "auto", ... }`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TiledSetting {
    /// Tiled with these settings.
    Table(Tiled),
    /// Tiled with these settings (`"auto"`: [`Tiled::default`]) when the pass's UNet call
    /// would not fit.
    Auto(Tiled),
}

/// The table form, `when` beside [`Tiled`]'s keys.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Table {
    #[serde(default, skip_serializing_if = "When::is_always")]
    when: When,
    #[serde(default)]
    method: super::Method,
    #[serde(default = "super::default_tile")]
    tile: u32,
    #[serde(default = "super::default_overlap")]
    overlap: u32,
    #[serde(default = "super::default_batch")]
    batch: u32,
}

#[derive(Deserialize, Serialize, Default, PartialEq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum When {
    #[default]
    Always,
    Auto,
}

impl When {
    fn is_always(&self) -> bool {
        *self == When::Always
    }
}

impl TiledSetting {
    /// The profile's range rule.
    pub fn checked(self) -> Result<Self, String> {
        match self {
            TiledSetting::Table(t) => t.checked().map(TiledSetting::Table),
            TiledSetting::Auto(t) => t.checked().map(TiledSetting::Auto),
        }
    }

    /// The table, once decided (`"auto"` is undecided: untiled until [`crate::auto_tiled`]
    /// runs).
    pub fn table(self) -> Option<Tiled> {
        match self {
            TiledSetting::Table(t) => Some(t),
            TiledSetting::Auto(_) => None,
        }
    }
}

impl fmt::Display for TiledSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TiledSetting::Table(t) => t.fmt(f),
            TiledSetting::Auto(t) if *t == Tiled::default() => f.write_str("\"auto\""),
            TiledSetting::Auto(t) => write!(
                f,
                "{{ when = \"auto\", method = \"{}\", tile = {}, overlap = {}, batch = {} }}",
                t.method.as_str(),
                t.tile,
                t.overlap,
                t.batch
            ),
        }
    }
}

impl Serialize for TiledSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TiledSetting::Table(t) => t.serialize(s),
            TiledSetting::Auto(t) if *t == Tiled::default() => s.serialize_str("auto"),
            TiledSetting::Auto(t) => Table {
                when: When::Auto,
                method: t.method,
                tile: t.tile,
                overlap: t.overlap,
                batch: t.batch,
            }
            .serialize(s),
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
                    "auto" => Ok(TiledSetting::Auto(Tiled::default())),
                    other => Err(E::custom(format!(
                        "tiled = \"{other}\": the only word is \"auto\" (tile when the pass would not fit); otherwise a table, e.g. tiled = {{ tile = 96, overlap = 48 }}"
                    ))),
                }
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<TiledSetting, M::Error> {
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let tiled = Tiled {
                    method: t.method,
                    tile: t.tile,
                    overlap: t.overlap,
                    batch: t.batch,
                };
                Ok(match t.when {
                    When::Always => TiledSetting::Table(tiled),
                    When::Auto => TiledSetting::Auto(tiled),
                })
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
        assert_eq!(p.tiled, TiledSetting::Auto(Tiled::default()));
        assert_eq!(toml::to_string(&p).unwrap().trim(), "tiled = \"auto\"");
        let p: P = toml::from_str("tiled = { method = \"mixture\", tile = 64 }").unwrap();
        let table = p.tiled.table().unwrap();
        assert_eq!(
            (table.method, table.tile, table.overlap),
            (super::super::Method::Mixture, 64, 48)
        );
        let back: P = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back.tiled, p.tiled);
        // `when = "auto"` with settings: read and written as a table.
        let p: P = toml::from_str("tiled = { when = \"auto\", tile = 128, overlap = 16 }").unwrap();
        let expected = Tiled {
            tile: 128,
            overlap: 16,
            ..Tiled::default()
        };
        assert_eq!(p.tiled, TiledSetting::Auto(expected));
        let text = toml::to_string(&p).unwrap();
        assert!(text.contains("when = \"auto\""), "{text}");
        let back: P = toml::from_str(&text).unwrap();
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
