//! The build, stage by stage: check the request, stage an output folder, make the root
//! tree and its images, write the disk, the boot partition and the other partitions, the
//! update package, the manifest and checksums, then move the finished folder into place.
//! Each stage is one function; `run` only sequences them.

use crate::progress::Progress;
use crate::*;

/// Everything the stages share.
struct Build<'a> {
    req: &'a BuildRequest,
    recipe: Recipe,
    /// SetupOS: its release date.
    released: Option<String>,
    setup_inputs: Vec<SetupInput>,
    staging: Staging,
    progress: Progress,
}

/// The output folder being built: `.<name>.partial-<pid>` next to the final one, removed on
/// any error until [`Staging::commit`] renames it into place.
struct Staging {
    parent: PathBuf,
    out_name: String,
    partial: PathBuf,
    work: PathBuf,
    cleanup: Cleanup,
}

/// What the root stage made.
struct RootImages {
    base: base::Base,
    bins: binary::Binaries,
    tree: rootfs::Tree,
    root_img: PathBuf,
    verity: Verity,
}

/// The disk with its partitions laid out and the root (and /var) written.
struct DiskImage {
    path: PathBuf,
    layout: Layout,
    root_part: disk_layout::Placed,
    var_part: Option<disk_layout::Placed>,
}

pub(crate) fn run(req: &BuildRequest) -> Result<BuildManifest, BuildError> {
    let mut b = Build::prepare(req)?;
    // SetupOS: the payload first, so its descriptor is part of the verified root.
    let (setup_payload, descriptor) = b.setup_payload()?.unzip();
    let root = b.root_images(descriptor.as_ref())?;
    b.progress.step("disk image");
    let disk = b.disk_image(&root, setup_payload.as_deref())?;
    let update_manifest = b.update_manifest(&root)?;
    let boot_options = b.boot_options(&update_manifest, &disk);
    let parts =
        b.boot_and_data_partitions(&root, &disk, &boot_options, setup_payload.as_deref())?;
    let outputs = b.update_package(&root, &update_manifest)?;
    b.progress.step("checksums and manifest");
    let manifest = b.manifest(root, disk, boot_options, parts, outputs)?;
    b.write_manifest_and_sums(&manifest)?;
    b.staging.commit(&req.out)?;
    b.progress.finish(&format!("built {}", req.out.display()));
    Ok(manifest)
}

impl<'a> Build<'a> {
    /// Check the request and the host before anything is written; stage the output folder.
    fn prepare(req: &'a BuildRequest) -> Result<Build<'a>, BuildError> {
        validate_version(&req.version)?;
        let mut recipe = Recipe::load(&req.recipe_dir)?;
        recipe.override_sizes(&req.size_overrides)?;
        require_tools(recipe.kind)?;
        let setup_inputs = if recipe.kind == ImageKind::Setupos {
            vec![
                load_setup_input("hostos", req.hostos.as_ref(), ImageKind::Hostos)?,
                load_setup_input("guestos", req.guestos.as_ref(), ImageKind::Guestos)?,
            ]
        } else {
            if req.hostos.is_some() || req.guestos.is_some() {
                return Err(BuildError::Invalid(
                    "--hostos and --guestos are only for building setupos".into(),
                ));
            }
            Vec::new()
        };
        let released = match recipe.kind {
            ImageKind::Setupos => {
                let d = req.released.clone().unwrap_or_else(today);
                validate_released(&d)?;
                Some(d)
            }
            _ => None,
        };
        let staging = Staging::create(&req.out)?;
        let progress = Progress::new(&format!("{} {}", recipe.name, req.version), 7);
        Ok(Build {
            req,
            recipe,
            released,
            setup_inputs,
            staging,
            progress,
        })
    }

    fn upgradable(&self) -> bool {
        self.recipe.kind != ImageKind::Setupos
    }

    fn kind(&self) -> &'static str {
        self.recipe.kind.as_str()
    }

    /// Debian base, binaries, the customized root tree (with SetupOS's payload descriptor),
    /// the initramfs, and the root filesystem with its verity tree.
    fn root_images(
        &mut self,
        payload: Option<&image_stream::SetupPayload>,
    ) -> Result<RootImages, BuildError> {
        let (req, work) = (self.req, self.staging.work.clone());
        self.progress.step("Debian base");
        let base = base::ensure_base(&self.recipe, &req.cache, &self.progress)?;
        self.progress.detail(&format!(
            "{} ({} packages, {})",
            base.key,
            base.packages.len(),
            if base.fresh { "debootstrap" } else { "cached" }
        ));
        self.progress.step("icos binaries and root tree");
        let bins = binary::build_binaries(&req.source, &req.cache, &self.progress)?;
        let root = rootfs::copy_base(&base.rootfs, &work)?;
        rootfs::customize(
            &self.recipe,
            &root,
            &req.version,
            &base.packages,
            &bins.icos,
        )?;
        if let Some(p) = payload {
            let dest = root.join(image_stream::PAYLOAD_FILE.trim_start_matches('/'));
            let json = serde_json::to_vec(p).expect("the payload serializes");
            std::fs::write(&dest, json).map_err(|e| BuildError::io("writing", &dest, e))?;
        }
        self.progress.step("initramfs");
        let tree = rootfs::build_initramfs(&self.recipe, &root, &bins.init, &work)?;
        rootfs::strip(&self.recipe, &root)?;
        self.progress.step("root filesystem (erofs + dm-verity)");
        let root_img = work.join("root.img");
        let fs_uuid = derive_uuid(&["icos-rootfs", self.kind(), &req.version]);
        let salt = derive(&["icos-verity-salt", self.kind(), &req.version]);
        let verity = rootimg::build_root_image(&root, &root_img, fs_uuid, &salt)?;
        // The tree is no longer needed; free its space before the disk is written.
        std::fs::remove_dir_all(&root).map_err(|e| BuildError::io("removing", &root, e))?;
        Ok(RootImages {
            base,
            bins,
            tree,
            root_img,
            verity,
        })
    }

    /// SetupOS only: the HostOS and GuestOS images it installs, and their descriptor.
    fn setup_payload(
        &mut self,
    ) -> Result<Option<(PathBuf, image_stream::SetupPayload)>, BuildError> {
        if self.upgradable() {
            return Ok(None);
        }
        self.progress
            .step("SetupOS payload (HostOS and GuestOS images)");
        Ok(Some(build_setup_payload(
            &self.setup_inputs,
            self.released
                .as_deref()
                .expect("SetupOS has a release date"),
            &self.staging.work,
            &self.progress,
        )?))
    }

    /// The partition sizes (an `auto` size fits the SetupOS payload).
    fn partition_specs(
        &self,
        setup_payload: Option<&Path>,
    ) -> Result<Vec<PartitionSpec>, BuildError> {
        let mut specs = Vec::new();
        for p in &self.recipe.partitions {
            let size = match p.size {
                PartSize::Fixed(s) => s,
                PartSize::Auto => {
                    let payload = setup_payload.expect("auto size only for SetupOS data");
                    let len = std::fs::metadata(payload)
                        .map_err(|e| BuildError::io("reading", payload, e))?
                        .len();
                    (len + (1 << 20)).div_ceil(disk_layout::ALIGN) * disk_layout::ALIGN
                }
            };
            specs.push(p.spec(size));
        }
        Ok(specs)
    }

    /// A sparse disk with its GPT, the root image in the built slot and, on A/B images, that
    /// slot's `/var` made here (reproducibly) instead of on the first boot.
    fn disk_image(
        &self,
        root: &RootImages,
        setup_payload: Option<&Path>,
    ) -> Result<DiskImage, BuildError> {
        let layout = Layout::compute(self.recipe.disk_guid, self.partition_specs(setup_payload)?)?;
        let path = self.staging.partial.join("disk.img");
        layout.create_sparse(&path)?;
        layout.write_gpt(&path)?;
        let root_role = if self.upgradable() {
            Role::Root(disk::BUILT_SLOT)
        } else {
            Role::SetupRoot
        };
        let root_part = layout.by_role(root_role).expect("validated recipe").clone();
        disk::write_into_partition(&path, &root_part, &root.root_img)?;
        let var_part = if self.upgradable() {
            let var = layout
                .by_role(Role::Var(disk::BUILT_SLOT))
                .expect("validated recipe")
                .clone();
            let var_img = self.staging.work.join("var.img");
            let fs_uuid = derive_uuid(&["icos-var", self.kind(), &self.req.version]).to_string();
            disk::make_ext4(&var_img, var.size(), "var", &fs_uuid)?;
            disk::write_into_partition(&path, &var, &var_img)?;
            let _ = std::fs::remove_file(&var_img);
            Some(var)
        } else {
            None
        };
        Ok(DiskImage {
            path,
            layout,
            root_part,
            var_part,
        })
    }

    /// The update package's manifest: every part's size and SHA-256, the verity parameters.
    fn update_manifest(&self, root: &RootImages) -> Result<UpdateManifest, BuildError> {
        let part = |name: &str, path: &Path| -> Result<Part, BuildError> {
            let d = digest_file(path)?;
            Ok(Part {
                name: name.into(),
                size: d.size,
                sha256: d.sha256,
            })
        };
        Ok(UpdateManifest {
            format: update_package::FORMAT,
            kind: self.recipe.kind,
            version: self.req.version.clone(),
            cmdline: self.recipe.kernel.cmdline.clone(),
            kernel_version: root.tree.kernel_version.clone(),
            verity: root.verity.clone(),
            parts: vec![
                part("vmlinuz", &root.tree.vmlinuz)?,
                part("initrd.img", &root.tree.initrd)?,
                part("root.img", &root.root_img)?,
            ],
        })
    }

    fn boot_options(&self, m: &UpdateManifest, disk: &DiskImage) -> String {
        let var = disk.var_part.as_ref().map(|p| p.spec.guid.to_string());
        m.boot_options(
            self.upgradable().then_some(disk::BUILT_SLOT.as_str()),
            &disk.root_part.spec.guid.to_string(),
            var.as_deref(),
        )
    }

    /// The ESP (boot loader, kernel, initrd, the built slot's entry), the config partition
    /// from the recipe, SetupOS's data partition; returns the digest of every part.
    fn boot_and_data_partitions(
        &self,
        root: &RootImages,
        disk: &DiskImage,
        boot_options: &str,
        setup_payload: Option<&Path>,
    ) -> Result<BTreeMap<String, Digested>, BuildError> {
        let (layout, img) = (&disk.layout, &disk.path);
        let title = format!("icos {} {}", self.recipe.kind, self.req.version);
        let entry = boot_slots::BootEntry::new(
            disk::BUILT_SLOT,
            1,
            &title,
            &self.req.version,
            boot_options,
        );
        disk::write_esp(
            img,
            layout,
            &disk::EspContent {
                bootloader: &root.tree.bootloader,
                vmlinuz: &root.tree.vmlinuz,
                initrd: &root.tree.initrd,
                entry,
                volume_id: volume_id(&["icos-esp", self.kind()]),
                image_info: format!("{{\"kind\":\"{}\"}}\n", self.recipe.kind),
            },
        )?;
        let mut parts = BTreeMap::new();
        if let Some(cfg_dir) = &self.recipe.config_dir {
            let role = if self.upgradable() {
                Role::Config
            } else {
                Role::SetupConfig
            };
            let cfg = layout.by_role(role).expect("validated").clone();
            let id = volume_id(&["icos-config", self.kind()]);
            disk::write_fat_partition(img, &cfg, "CONFIG", id, cfg_dir)?;
            parts.insert(
                "config".to_string(),
                digest_range(img, cfg.start, cfg.size())?,
            );
        }
        if let Some(payload) = setup_payload {
            let data = layout.by_role(Role::SetupData).expect("validated").clone();
            disk::write_into_partition(img, &data, payload)?;
            parts.insert(
                "data".to_string(),
                digest_range(img, data.start, data.size())?,
            );
        }
        let esp = layout.by_role(Role::Esp).expect("validated");
        parts.insert("esp".to_string(), digest_range(img, esp.start, esp.size())?);
        parts.insert("vmlinuz".to_string(), digest_file(&root.tree.vmlinuz)?);
        parts.insert("initrd.img".to_string(), digest_file(&root.tree.initrd)?);
        parts.insert("root.img".to_string(), digest_file(&root.root_img)?);
        parts.insert("icos".to_string(), digest_file(&root.bins.icos)?);
        parts.insert("icos-init".to_string(), digest_file(&root.bins.init)?);
        Ok(parts)
    }

    /// A/B images: the update package from the same parts.
    fn update_package(
        &mut self,
        root: &RootImages,
        m: &UpdateManifest,
    ) -> Result<BTreeMap<String, Digested>, BuildError> {
        let mut outputs = BTreeMap::new();
        if !self.upgradable() {
            return Ok(outputs);
        }
        self.progress.step("update package");
        let pkg = self.staging.partial.join("update.tar");
        update_package::write_package(
            &pkg,
            m,
            &PartFiles {
                vmlinuz: root.tree.vmlinuz.clone(),
                initrd: root.tree.initrd.clone(),
                root: root.root_img.clone(),
            },
        )?;
        outputs.insert("update.tar".to_string(), digest_file(&pkg)?);
        Ok(outputs)
    }

    fn manifest(
        &self,
        root: RootImages,
        disk: DiskImage,
        boot_options: String,
        parts: BTreeMap<String, Digested>,
        mut outputs: BTreeMap<String, Digested>,
    ) -> Result<BuildManifest, BuildError> {
        outputs.insert("disk.img".to_string(), digest_file(&disk.path)?);
        let inputs = self
            .setup_inputs
            .iter()
            .map(|i| {
                (
                    i.name.to_string(),
                    InputRef {
                        path: relative_to(&i.dir, &self.staging.parent),
                        version: i.manifest.version.clone(),
                        manifest_sha256: i.manifest_sha256.clone(),
                    },
                )
            })
            .collect();
        let recipe = &self.recipe;
        Ok(BuildManifest {
            format: MANIFEST_FORMAT,
            image: recipe.kind,
            version: self.req.version.clone(),
            builder: format!("icos image-builder {}", env!("CARGO_PKG_VERSION")),
            recipe: RecipeRef {
                name: recipe.name.clone(),
                content_hash: recipe.content_hash()?,
            },
            base: BaseRef {
                key: root.base.key.clone(),
                suite: recipe.base.suite.clone(),
                mirror: recipe.base.mirror.clone(),
                variant: recipe.base.variant.clone(),
                debootstrap: root.base.debootstrap_version.clone(),
            },
            size_overrides: self.req.size_overrides.clone(),
            inputs,
            binaries: root.bins.digests()?,
            released: self.released.clone(),
            kernel_version: root.tree.kernel_version.clone(),
            cmdline: recipe.kernel.cmdline.clone(),
            boot_options,
            verity: root.verity,
            layout: disk.layout,
            parts,
            outputs,
            packages: root.base.packages,
        })
    }

    /// `manifest.json` and `SHA256SUMS` over every output; the work folder goes.
    fn write_manifest_and_sums(&self, manifest: &BuildManifest) -> Result<(), BuildError> {
        let (partial, work) = (&self.staging.partial, &self.staging.work);
        std::fs::remove_dir_all(work).map_err(|e| BuildError::io("removing", work, e))?;
        let mpath = partial.join("manifest.json");
        let json = serde_json::to_string_pretty(manifest).expect("manifest serializes") + "\n";
        std::fs::write(&mpath, json).map_err(|e| BuildError::io("writing", &mpath, e))?;
        let mut names: Vec<String> = manifest.outputs.keys().cloned().collect();
        names.push("manifest.json".into());
        names.sort();
        let mut sums = String::new();
        for n in names {
            let d = match manifest.outputs.get(&n) {
                Some(d) => d.clone(),
                None => digest_file(&partial.join(&n))?,
            };
            sums.push_str(&format!("{}  {n}\n", d.sha256));
        }
        let spath = partial.join("SHA256SUMS");
        std::fs::write(&spath, sums).map_err(|e| BuildError::io("writing", &spath, e))
    }
}

/// The host tools this kind of image needs, all checked before anything starts.
fn require_tools(kind: ImageKind) -> Result<(), BuildError> {
    let mut needed = vec![
        host_tools::tools::DEBOOTSTRAP,
        host_tools::tools::MKFS_EROFS,
        host_tools::tools::VERITYSETUP,
        host_tools::tools::SGDISK,
        host_tools::tools::CHROOT,
    ];
    if kind == ImageKind::Setupos {
        needed.push(host_tools::tools::ZSTD);
    } else {
        needed.push(host_tools::tools::MKE2FS);
    }
    Ok(host_tools::require_all(&needed)?)
}

/// A FAT volume id derived from the image kind (fixed, for reproducibility).
fn volume_id(parts: &[&str]) -> u32 {
    u32::from_le_bytes(derive(parts)[..4].try_into().expect("4 bytes"))
}

impl Staging {
    /// `.<name>.partial-<pid>` beside `out`, after checking there is room.
    fn create(out: &Path) -> Result<Staging, BuildError> {
        let out_name = out
            .file_name()
            .ok_or_else(|| {
                BuildError::Invalid(format!("output path {} has no folder name", out.display()))
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .map_err(|e| BuildError::io("creating output folder", &parent, e))?;
        if let Some(have) = free_bytes(&parent) {
            if have < MIN_FREE_BYTES {
                return Err(BuildError::NoSpace {
                    path: parent,
                    need_mib: MIN_FREE_BYTES >> 20,
                    have_mib: have >> 20,
                });
            }
        }
        let partial = parent.join(format!(".{out_name}.partial-{}", std::process::id()));
        if partial.exists() {
            std::fs::remove_dir_all(&partial)
                .map_err(|e| BuildError::io("removing", &partial, e))?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| BuildError::io("creating", &partial, e))?;
        let cleanup = Cleanup(Some(partial.clone()));
        let work = partial.join("work");
        std::fs::create_dir_all(&work).map_err(|e| BuildError::io("creating", &work, e))?;
        Ok(Staging {
            parent,
            out_name,
            partial,
            work,
            cleanup,
        })
    }

    /// Swap the finished build into place (an older build there is replaced whole).
    fn commit(&mut self, out: &Path) -> Result<(), BuildError> {
        if out.exists() {
            let old = self
                .parent
                .join(format!(".{}.old-{}", self.out_name, std::process::id()));
            std::fs::rename(out, &old).map_err(|e| BuildError::io("moving aside", out, e))?;
            std::fs::rename(&self.partial, out)
                .map_err(|e| BuildError::io("moving into place", out, e))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.partial, out)
                .map_err(|e| BuildError::io("moving into place", out, e))?;
        }
        self.cleanup.disarm();
        Ok(())
    }
}
