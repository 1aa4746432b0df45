//! A1111's built-in upscaler names and the files they map to (A1111's
//! `modules/realesrgan_model.py`, `modules/esrgan_model.py` and the SwinIR, LDSR and ScuNET
//! extensions, which download their file under these names), plus 4x-UltraSharp, the
//! commonest third-party file. SwinIR, LDSR and ScuNET are other architectures: listed (as
//! A1111 lists them) and refused by name.

/// One A1111 upscaler name.
#[derive(Debug)]
pub struct Known {
    /// As `/sdapi/v1/upscalers` lists it ("R-ESRGAN 4x+").
    pub name: &'static str,
    /// Other names A1111 has used for it ("SwinIR 4x").
    pub aliases: &'static [&'static str],
    /// A1111's upscaler kind (`model_name` in the listing): "RealESRGAN", "ESRGAN", ...
    pub kind: &'static str,
    /// The file A1111 keeps it in, in the upscaler folder.
    pub file: &'static str,
    pub url: &'static str,
    /// The scale A1111 lists.
    pub scale: i64,
    /// `Some(architecture)` when hiresfix does not run it.
    pub not_run: Option<&'static str>,
}

impl Known {
    /// The stem of its file ("RealESRGAN_x4plus").
    pub fn stem(&self) -> &'static str {
        self.file
            .rsplit_once('.')
            .map_or(self.file, |(stem, _)| stem)
    }

    fn is(&self, name: &str) -> bool {
        let name = name.trim();
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }

    /// The one-line refusal of an architecture hiresfix does not run.
    pub fn refusal(&self) -> Option<String> {
        self.not_run.map(|arch| {
            format!(
                "{} is {arch}, an architecture hiresfix does not run: it runs ESRGAN-family models (RRDBNet, SRVGGNetCompact) — use R-ESRGAN 4x+, 4x-UltraSharp or another ESRGAN file",
                self.name
            )
        })
    }
}

pub static KNOWN: &[Known] = &[
    Known {
        name: "R-ESRGAN General 4xV3",
        aliases: &[],
        kind: "RealESRGAN",
        file: "realesr-general-x4v3.pth",
        url: "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.5.0/realesr-general-x4v3.pth",
        scale: 4,
        not_run: None,
    },
    Known {
        name: "R-ESRGAN General WDN 4xV3",
        aliases: &[],
        kind: "RealESRGAN",
        file: "realesr-general-wdn-x4v3.pth",
        url: "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.5.0/realesr-general-wdn-x4v3.pth",
        scale: 4,
        not_run: None,
    },
    Known {
        name: "R-ESRGAN AnimeVideo",
        aliases: &[],
        kind: "RealESRGAN",
        file: "realesr-animevideov3.pth",
        url: "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.5.0/realesr-animevideov3.pth",
        scale: 4,
        not_run: None,
    },
    Known {
        name: "R-ESRGAN 4x+",
        aliases: &[],
        kind: "RealESRGAN",
        file: "RealESRGAN_x4plus.pth",
        url: "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
        scale: 4,
        not_run: None,
    },
    Known {
        name: "R-ESRGAN 4x+ Anime6B",
        aliases: &[],
        kind: "RealESRGAN",
        file: "RealESRGAN_x4plus_anime_6B.pth",
        url: "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
        scale: 4,
        not_run: None,
    },
    Known {
        name: "R-ESRGAN 2x+",
        aliases: &[],
        kind: "RealESRGAN",
        file: "RealESRGAN_x2plus.pth",
        url: "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth",
        scale: 2,
        not_run: None,
    },
    Known {
        name: "ESRGAN_4x",
        aliases: &["ESRGAN 4x"],
        kind: "ESRGAN",
        file: "ESRGAN_4x.pth",
        url: "https://github.com/cszn/KAIR/releases/download/v1.0/ESRGAN.pth",
        scale: 4,
        not_run: None,
    },
    Known {
        name: "4x-UltraSharp",
        aliases: &[],
        kind: "ESRGAN",
        file: "4x-UltraSharp.pth",
        url: "https://huggingface.co/lokCX/4x-Ultrasharp/resolve/main/4x-UltraSharp.pth",
        scale: 4,
        not_run: None,
    },
    Known {
        name: "SwinIR_4x",
        aliases: &["SwinIR 4x"],
        kind: "SwinIR",
        file: "SwinIR_4x.pth",
        url: "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth",
        scale: 4,
        not_run: Some("a SwinIR model (a Swin transformer)"),
    },
    Known {
        name: "LDSR",
        aliases: &[],
        kind: "LDSR",
        file: "model.ckpt",
        url: "https://heibox.uni-heidelberg.de/f/578df07c8fc04ffbadf3/?dl=1",
        scale: 4,
        not_run: Some("an LDSR model (latent diffusion super-resolution)"),
    },
    Known {
        name: "ScuNET",
        aliases: &["ScuNET GAN", "ScuNET PSNR"],
        kind: "ScuNET",
        file: "ScuNET.pth",
        url: "https://github.com/cszn/KAIR/releases/download/v1.0/scunet_color_real_gan.pth",
        scale: 4,
        not_run: Some("a ScuNET model (a Swin-Conv U-Net denoiser)"),
    },
];

/// The A1111 name `name` (or one of its aliases), case-insensitive.
pub fn by_name(name: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.is(name))
}

/// The A1111 name whose file has `stem` (not LDSR: its `model.ckpt` lives in a folder of its
/// own, and a `model.safetensors` among upscalers is not it).
pub fn by_stem(stem: &str) -> Option<&'static Known> {
    KNOWN
        .iter()
        .filter(|k| k.name != "LDSR")
        .find(|k| k.stem().eq_ignore_ascii_case(stem))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL_ESRGAN: &str = "https://github.com/xinntao/Real-ESRGAN/releases/download/";

    #[test]
    fn each_real_esrgan_url_ends_in_its_file_and_names_are_unique() {
        for k in KNOWN.iter().filter(|k| k.kind == "RealESRGAN") {
            assert!(k.url.starts_with(REAL_ESRGAN), "{}", k.name);
            assert!(k.url.ends_with(&format!("/{}", k.file)), "{}", k.name);
        }
        for k in KNOWN {
            assert_eq!(by_name(k.name).map(|f| f.name), Some(k.name));
            if k.name != "LDSR" {
                assert_eq!(by_stem(k.stem()).map(|f| f.name), Some(k.name));
            }
            assert_eq!(KNOWN.iter().filter(|o| o.is(k.name)).count(), 1);
        }
        assert_eq!(by_name("scunet psnr").map(|k| k.name), Some("ScuNET"));
        assert_eq!(by_stem("RealESRGAN_x2plus").map(|k| k.scale), Some(2));
        assert!(by_stem("model").is_none());
    }
}
