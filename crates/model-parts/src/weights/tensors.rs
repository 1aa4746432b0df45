//! Reading a checkpoint's tensors: one by its model key, or every variable of a model's
//! VarStore filled from one checkpoint or the weighted sum of several (a merge), with a
//! second stream reading ahead of the copy; on the CPU, parameters of the stored dtype view the
//! file instead ([`super::mapped`]).
use anyhow::{anyhow, bail, Context, Result};
use tch::nn::VarStore;
use tch::{Device, Kind};

use super::safetensors;
use super::{describe_merge, mapped, read_ahead, Source, Weights};
use crate::health::{is_finite, number};

/// Model variables by key.
type Variables = Vec<(String, tch::Tensor)>;

impl Weights {
    /// The file holding `key`, and the tensor's own name there when it differs.
    fn origin(&self, key: &str) -> String {
        match self.tensors.get(key) {
            Some(s) if s.name != key => {
                format!("{} (as `{}`)", self.files[s.file].path().display(), s.name)
            }
            Some(s) => self.files[s.file].path().display().to_string(),
            None => self.path.display().to_string(),
        }
    }

    fn source(&self, key: &str) -> Result<&Source> {
        self.tensors
            .get(key)
            .ok_or_else(|| anyhow!("{}: missing tensor `{key}`", self.path.display()))
    }

    /// Reads one tensor (CPU, stored dtype) by its model key.
    pub fn read(&self, key: &str) -> Result<tch::Tensor> {
        let source = self.source(key)?;
        self.files[source.file].with_view(&source.name, |t| Ok(source.transform.apply(t).copy()))
    }

    /// Fills every variable of `vs` (named by model key) whose name starts with `only` (all
    /// with "") from the checkpoint, converting dtype and device on the way. A CPU variable of
    /// the dtype the tensor is stored in views the file instead (zero copy, [`super::mapped`]);
    /// any other gets one copy from the file's mapping. Keys the model has no variable for are
    /// ignored (EMA, `model_ema.*`, ...).
    pub fn copy_into(&self, vs: &VarStore, only: &str) -> Result<()> {
        Self::copy_weighted_into(&[(self, 1.0)], vs, only)
    }

    /// [`Self::copy_into`] of the weighted sum `Σ wᵢ·checkpointᵢ` (a merge from the profile,
    /// A1111's weighted-sum merge), one tensor at a time (always copied).
    pub fn copy_weighted_into(
        sources: &[(&Weights, f64)],
        vs: &VarStore,
        only: &str,
    ) -> Result<()> {
        if let Some((ckpt, weight)) = sources.iter().find(|(_, w)| !w.is_finite()) {
            bail!(
                "merge: the weight {} of {} is not a finite number",
                number(*weight),
                ckpt.path.display()
            );
        }
        let mut variables: Vec<(String, tch::Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(k, _)| k.starts_with(only))
            .collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        // What the variables held is replaced: the pages of any that viewed a file go back
        // to the OS now (a VAE swapped in on a zero-copy model).
        mapped::drop_mapped_pages(variables.iter().map(|(_, v)| v));
        if let [(ckpt, weight)] = sources {
            if *weight == 1.0 && !mapped::copy_requested() {
                let (viewed, rest) = ckpt.view_variables(variables)?;
                read_ahead::prefetch_in_background(ckpt.uncached_spans(&viewed));
                variables = rest;
            }
        }
        // A whole model from one checkpoint read from disk: a second stream reads ahead
        // over the span of the tensors copied while they are copied.
        let ranges: Vec<_> = match (only.is_empty(), sources) {
            (true, [(ckpt, _)]) => {
                let keys: Vec<&str> = variables.iter().map(|(k, _)| k.as_str()).collect();
                ckpt.uncached_spans(&keys)
            }
            _ => Vec::new(),
        };
        read_ahead::read_ahead_while(&ranges, || Self::copy_variables(sources, variables))
    }

    /// Per file not mostly in the page cache, the byte range spanning the tensors of model
    /// keys `keys` (for reading ahead).
    fn uncached_spans(&self, keys: &[&str]) -> Vec<(std::path::PathBuf, u64, u64)> {
        self.files
            .iter()
            .enumerate()
            .filter(|(_, file)| !file.mostly_cached())
            .filter_map(|(i, file)| {
                file.span_of(keys.iter().filter_map(|key| {
                    let source = self.tensors.get(*key)?;
                    (source.file == i).then_some(source.name.as_str())
                }))
            })
            .collect()
    }

    /// Points each of `variables` that can view this checkpoint's file at it (CPU, stored in
    /// the variable's dtype, aligned, contiguous as the model wants it); returns the keys
    /// viewed and the variables left to copy.
    fn view_variables(
        &self,
        variables: Vec<(String, tch::Tensor)>,
    ) -> Result<(Vec<&str>, Variables)> {
        let mut viewed = Vec::new();
        let mut rest = Vec::new();
        for (key, mut var) in variables {
            let view = match var.device() {
                Device::Cpu => {
                    self.model_view(&key, &var.size(), var.kind(), var.is_floating_point())?
                }
                _ => None,
            };
            match view {
                Some(view) => {
                    tch::no_grad(|| var.f_set_data(&view)).with_context(|| {
                        format!(
                            "{}: cannot use tensor `{key}` in the model",
                            self.path.display()
                        )
                    })?;
                    if let Some((model_key, _)) = self.tensors.get_key_value(&key) {
                        viewed.push(model_key.as_str());
                    }
                }
                None => rest.push((key, var)),
            }
        }
        Ok((viewed, rest))
    }

    /// The stored tensor for variable `key` of shape `wanted` and dtype `kind` (`float`: a
    /// floating-point variable) viewing the file ([`safetensors::SafetensorsFile::mapped_view`]), when it can; the same checks as a
    /// copy first.
    fn model_view(
        &self,
        key: &str,
        wanted: &[i64],
        kind: Kind,
        float: bool,
    ) -> Result<Option<tch::Tensor>> {
        let as_conv = self.check_model_tensor(key, wanted, float)?;
        let source = self.source(key)?;
        let Some(stored) = self.files[source.file].mapped_view(&source.name, kind) else {
            return Ok(None);
        };
        let view = source.transform.apply(&stored);
        let view = if as_conv { view.reshape(wanted) } else { view };
        Ok((view.is_contiguous() && view.size() == wanted).then_some(view))
    }

    /// The loop of [`Self::copy_weighted_into`] over the model's `variables`. A CPU variable
    /// gets a new tensor, filled, rather than being written in place: what it held may be a
    /// view of a file, which is never written ([`super::mapped`]).
    fn copy_variables(
        sources: &[(&Weights, f64)],
        variables: Vec<(String, tch::Tensor)>,
    ) -> Result<()> {
        let fill = |var: &mut tch::Tensor, src: &tch::Tensor| -> Result<()> {
            tch::no_grad(|| match var.device() {
                Device::Cpu => {
                    let mut fresh = tch::Tensor::f_empty(var.size(), (var.kind(), Device::Cpu))?;
                    fresh.f_copy_(src)?;
                    var.f_set_data(&fresh)
                }
                _ => var.f_copy_(src),
            })?;
            Ok(())
        };
        for (key, mut var) in variables {
            let single = sources.len() == 1 && sources[0].1 == 1.0;
            let mut sum: Option<tch::Tensor> = None;
            let wanted = var.size();
            let float = var.is_floating_point();
            for (ckpt, weight) in sources {
                ckpt.with_model_tensor(&key, &wanted, float, |src| {
                    if single {
                        return fill(&mut var, src).with_context(|| {
                            format!(
                                "{}: cannot copy tensor `{key}` into the model",
                                ckpt.path.display()
                            )
                        });
                    }
                    if !is_finite(src) {
                        bail!("{}: tensor `{key}` holds NaN or inf — the file is damaged; re-download it", ckpt.origin(&key));
                    }
                    let part = src.to_kind(tch::Kind::Float) * *weight;
                    sum = Some(match sum.take() {
                        Some(s) => s + part,
                        None => part,
                    });
                    Ok(())
                })?;
            }
            if let Some(sum) = sum {
                fill(&mut var, &sum).with_context(|| {
                    format!("cannot copy the merged tensor `{key}` into the model")
                })?;
                // Weights that overflow fp32 (or the model's dtype) never reach the model.
                if !is_finite(&var) {
                    let paths: Vec<_> = sources
                        .iter()
                        .map(|(c, w)| (c.path.as_path(), *w))
                        .collect();
                    bail!(
                        "the merge ({}) makes `{key}` NaN or inf in {} — use merge weights near 0..1",
                        describe_merge(&paths),
                        crate::health::dtype(var.kind())
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs `f` on the stored tensor for model variable `var` (named `key`), shaped as the
    /// model wants it; a missing, misshaped or non-float tensor is an error naming it.
    fn with_model_tensor(
        &self,
        key: &str,
        wanted: &[i64],
        float: bool,
        f: impl FnOnce(&tch::Tensor) -> Result<()>,
    ) -> Result<()> {
        let as_conv = self.check_model_tensor(key, wanted, float)?;
        let source = self.source(key)?;
        self.files[source.file].with_view(&source.name, |view| {
            let src = source.transform.apply(view);
            let src = if as_conv { src.reshape(wanted) } else { src };
            f(&src)
        })
    }

    /// An error naming `key` when its tensor is missing, misshaped for `wanted` or (with
    /// `float`) not floating point; else whether it is a Linear weight the model wants as a
    /// 1x1 conv.
    fn check_model_tensor(&self, key: &str, wanted: &[i64], float: bool) -> Result<bool> {
        let shown = self.path.display();
        let stored = self.shape(key).ok_or_else(|| {
            anyhow!("{shown}: missing tensor `{key}` (the model expects shape {wanted:?}) — the checkpoint is incomplete or not of this family")
        })?;
        // diffusers and some converters store the VAE attention 1x1 convs as Linear weights.
        let as_conv = stored.len() == 2
            && wanted.len() == 4
            && wanted[..2] == stored[..]
            && wanted[2..] == [1, 1];
        if stored != wanted && !as_conv {
            bail!("{}: tensor `{key}` has shape {stored:?} where the checkpoint's other tensors imply {wanted:?} — the file is damaged or mixes two models", self.origin(key));
        }
        let source = self.source(key)?;
        let dtype = &self.files[source.file].entries()[&source.name].dtype;
        if float && !safetensors::is_float(dtype) {
            bail!("{}: tensor `{key}` is stored as {dtype}, not floating point — the file is quantized or damaged; use an fp16/fp32 checkpoint", self.origin(key));
        }
        Ok(as_conv)
    }
}
