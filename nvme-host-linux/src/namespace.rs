//! Namespaces: what Identify Namespace said at attach.

use nvme_regs::identify::IdentifyNamespace;

/// An active namespace.
#[derive(Clone, Debug)]
pub struct Namespace {
    id: u32,
    block_size: u32,
    blocks: u64,
    identify: Box<IdentifyNamespace>,
}

impl Namespace {
    /// Namespace id.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    /// Size in logical blocks (NSZE).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }
    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks * self.block_size as u64
    }
    /// The Identify Namespace data read at attach.
    pub fn identify(&self) -> &IdentifyNamespace {
        &self.identify
    }
}

impl Namespace {
    /// A namespace from its Identify data; `None` when it has no blocks or no block size
    /// (inactive or unusable).
    pub(crate) fn from_identify(id: u32, identify: IdentifyNamespace) -> Option<Namespace> {
        let block_size = identify.block_size();
        if identify.nsze == 0 || block_size == 0 {
            return None;
        }
        Some(Namespace {
            id,
            block_size,
            blocks: identify.nsze,
            identify: Box::new(identify),
        })
    }
}
