//! `hiresfix upscale IMAGE --upscaler NAME [--scale 2] [-o OUT]`: A1111's "Extras" upscale of
//! an existing image (the engine's `extras`), written as a new PNG that keeps the image's
//! generation parameters and adds A1111's `postprocessing` text; nothing is written on failure.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use hiresfix_engine::extras::{self, Resize, Settings};
use hiresfix_engine::output::{add_text_chunk, encode_png, read_text_chunks, write_new_file};

/// `hiresfix upscale`'s arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    pub image: PathBuf,
    /// "Lanczos", "Nearest", a model file's stem in --upscalers / $HIRESFIX_UPSCALER_PATH, or
    /// A1111's name of a Real-ESRGAN file ("R-ESRGAN 4x+").
    #[arg(long)]
    pub upscaler: String,
    /// Factor (A1111's "Resize"); the output is `int(side × scale)` rounded down to 8.
    #[arg(long, default_value_t = 2.0)]
    pub scale: f64,
    /// A second upscaler blended in (A1111's "Upscaler 2").
    #[arg(long)]
    pub upscaler_2: Option<String>,
    /// How much of upscaler 2 shows, 0 to 1.
    #[arg(long, default_value_t = 0.5)]
    pub visibility_2: f64,
    /// Folder of model upscalers (ESRGAN family), searched before $HIRESFIX_UPSCALER_PATH.
    #[arg(long)]
    pub upscalers: Option<PathBuf>,
    /// More plugin folders.
    #[arg(long = "plugins", value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
    /// Output path (default: IMAGE-upscaled.png beside the image); never overwritten.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

pub fn run(args: &Args, quiet: bool) -> Result<()> {
    if let Some(dir) = &args.upscalers {
        if !dir.is_dir() {
            bail!("--upscalers {}: not a folder", dir.display());
        }
    }
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| default_output(&args.image));
    if out.exists() && args.output.is_some() {
        bail!(
            "{} exists — choose another name with -o or remove it",
            out.display()
        );
    }
    // PNG of any colour type, JPEG or WebP, as img2img's init image.
    let decoded = hiresfix_engine::img2img::init::read(&args.image, "IMAGE")?;
    let image = extras::Rgb8 {
        width: decoded.rgb.width as u32,
        height: decoded.rgb.height as u32,
        pixels: decoded.rgb.data,
    };
    let settings = Settings {
        upscaler_1: args.upscaler.clone(),
        upscaler_2: args.upscaler_2.clone().unwrap_or_else(|| "None".into()),
        visibility_2: match args.upscaler_2 {
            Some(_) => args.visibility_2,
            None => 0.0,
        },
        resize: Resize::By(args.scale),
        max_side: hiresfix_engine::defaults::MAX_SIZE,
    };
    extras::check((image.width, image.height), &settings).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            args.image.display(),
            hiresfix_engine::errors::one_line(&e).replace("upscaling_resize", "--scale")
        )
    })?;
    let registry = hiresfix_engine::registry::Registry::load(
        &args.plugin_dirs,
        &std::collections::BTreeMap::new(),
    );
    let dirs =
        hiresfix_engine::upscaler_models::dirs(&args.upscalers.iter().cloned().collect::<Vec<_>>());
    let device = hiresfix_engine::models::device_of(&hiresfix_engine::profile::DeviceChoice::Auto);
    let terminal = crate::terminal::Terminal::new(quiet);
    let rename = |e: anyhow::Error| {
        let text = hiresfix_engine::errors::one_line(&e)
            .replace("upscaler_1: ", "--upscaler: ")
            .replace("upscaler_2: ", "--upscaler-2: ");
        anyhow::anyhow!("{text}; nothing was written")
    };
    let upscaled =
        extras::upscale(&registry, &dirs, device, &image, &settings, &terminal).map_err(rename)?;
    let info = extras::infotext(&upscaled.info);
    let chunks = read_text_chunks(&args.image).unwrap_or_default();
    let parameters = chunks
        .iter()
        .find(|(k, _)| k == "parameters")
        .map_or("", |(_, v)| v.as_str());
    let png = encode_png(
        upscaled.image.width,
        upscaled.image.height,
        &upscaled.image.pixels,
        parameters,
        "",
        None,
    )?;
    let png = match info.is_empty() {
        true => png,
        false => add_text_chunk(&png, "postprocessing", &info)?,
    };
    let written = write_new_file(&out, &png)?;
    hiresfix_engine::registry::warn_refused(&registry);
    println!("{}", written.display());
    Ok(())
}

fn default_output(image: &Path) -> PathBuf {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    image.with_file_name(format!("{stem}-upscaled.png"))
}
