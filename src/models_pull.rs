//! `sdq models pull URL`: downloads one `.safetensors` file into the models directory,
//! with a progress bar, written beside its final name and renamed when complete so a
//! scan never lists half a file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

/// Downloads `url` into `folder`, named after the URL's last path segment.
pub fn download_url(url: &str, folder: &Path) -> anyhow::Result<PathBuf> {
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .with_context(|| format!("cannot tell a file name from {url}"))?
        .to_string();
    if !name.ends_with(".safetensors") {
        bail!(
            "only .safetensors files are pulled ({name}); pickles (.ckpt, .pt) are refused \
             because loading them can run arbitrary code"
        );
    }
    std::fs::create_dir_all(folder)?;
    let target = folder.join(&name);
    if target.exists() {
        bail!("{} already exists", target.display());
    }
    let response = ureq::get(url)
        .call()
        .with_context(|| format!("downloading {url} failed"))?;
    let total: Option<u64> = response
        .header("content-length")
        .and_then(|v| v.parse().ok());
    let bar = ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("valid template"),
    );
    let partial = folder.join(format!(".{name}.part-{}", std::process::id()));
    let mut out = std::fs::File::create(&partial)?;
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        let n = reader.read(&mut buf).context("the download was cut off")?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        written += n as u64;
        bar.set_position(written);
    }
    out.sync_all()?;
    bar.finish_and_clear();
    if total.is_some_and(|t| t != written) {
        let _ = std::fs::remove_file(&partial);
        bail!("the download of {url} was cut off ({written} bytes)");
    }
    // A file that is not a readable safetensors is not kept.
    if let Err(e) = crate::inference::catalogue::header(&partial) {
        let _ = std::fs::remove_file(&partial);
        bail!("{url} is not a readable .safetensors file: {e}");
    }
    std::fs::rename(&partial, &target)?;
    Ok(target)
}
