//! A local governance setup: neuron, operator and online keys written to a folder, and the
//! genesis that names them. Used by `icos testnet` and by tests; a real network writes its
//! genesis by hand from keys its neurons generated themselves (`icos gov keygen`).

use registry_model::{keys, Genesis, Neuron, Operator, Settings};
use std::path::{Path, PathBuf};

pub struct LocalGovernance {
    pub dir: PathBuf,
    /// Neuron keys, neuron i + 1 uses `neurons[i]`.
    pub neurons: Vec<keys::SecretKey>,
    pub operators: Vec<(String, keys::SecretKey)>,
    pub online_key: keys::SecretKey,
    /// The network's root BLS key: its public key is in the genesis; subnets' keys are
    /// delegated from it (`root.bls`).
    pub root_key: certified_state::BlsKey,
    pub genesis: Genesis,
}

impl LocalGovernance {
    /// Create keys and a genesis in `dir` (which must not hold keys yet):
    /// `neuron_<id>.key`, `operator_<id>.key`, `online.key`, `root.bls`, `genesis.toml`.
    pub fn create(
        dir: &Path,
        network: &str,
        powers: &[u64],
        operators: &[(&str, u32)],
        settings: impl FnOnce(String) -> Settings,
    ) -> Result<LocalGovernance, registry_model::ModelError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| registry_model::ModelError::Key(format!("{}: {e}", dir.display())))?;
        let online_key = keys::generate();
        keys::write_key(&dir.join("online.key"), &online_key)?;
        let root_key = certified_state::BlsKey::generate();
        registry_model::subnet_key::write_bls_key(&dir.join("root.bls"), &root_key)?;
        let mut neurons = Vec::new();
        let mut genesis_neurons = Vec::new();
        for (i, p) in powers.iter().enumerate() {
            let k = keys::generate();
            let id = i as u64 + 1;
            keys::write_key(&dir.join(format!("neuron_{id}.key")), &k)?;
            genesis_neurons.push(Neuron {
                id,
                public_key: keys::public_hex(&k),
                voting_power: *p,
            });
            neurons.push(k);
        }
        let mut ops = Vec::new();
        let mut genesis_ops = Vec::new();
        for (id, allowance) in operators {
            let k = keys::generate();
            keys::write_key(&dir.join(format!("operator_{id}.key")), &k)?;
            genesis_ops.push(Operator {
                id: id.to_string(),
                public_key: keys::public_hex(&k),
                node_allowance: *allowance,
                nodes_added: 0,
            });
            ops.push((id.to_string(), k));
        }
        let genesis = Genesis {
            network: network.to_string(),
            settings: settings(keys::public_hex(&online_key)),
            neurons: genesis_neurons,
            operators: genesis_ops,
            actions: Vec::new(),
            root_key: Some(hex::encode(root_key.public_der())),
        };
        let toml = toml::to_string(&genesis)
            .map_err(|e| registry_model::ModelError::Invalid(e.to_string()))?;
        std::fs::write(dir.join("genesis.toml"), toml)
            .map_err(|e| registry_model::ModelError::Key(e.to_string()))?;
        Ok(LocalGovernance {
            dir: dir.to_path_buf(),
            neurons,
            operators: ops,
            online_key,
            root_key,
            genesis,
        })
    }

    /// Default settings: proposals open for a day, freshness statements valid 5 minutes.
    pub fn default_settings(online_key: String) -> Settings {
        Settings {
            online_key,
            proposal_deadline_secs: 86_400,
            freshness_secs: 300,
        }
    }
}
