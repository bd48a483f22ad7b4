//! Image-build progress on stderr: a spinner on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct BuildProgress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl BuildProgress {
    pub fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self { bar, quiet }
    }
}

impl sandbox::images::BuildProgress for BuildProgress {
    fn stage(&self, image: &str, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(format!("building {image}: {message}")),
            None if !self.quiet => eprintln!("sbx: building {image}: {message}"),
            None => {}
        }
    }

    fn done(&self, image: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("built {image}")),
            None if !self.quiet => eprintln!("sbx: built {image}"),
            None => {}
        }
    }
}

impl Drop for BuildProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
