//! How plans travel between the client, the scheduler and the executors: Ballista's codec, and
//! scoreland's own nodes ([`NodeCodec`], such as the transform's writer of kept rows). Every
//! process of a cluster is the same binary and is given the same nodes, so what one encodes the
//! others decode.
//!
//! On the wire, a node of Ballista's is its bytes after a 0; one of scoreland's is a 1, the
//! length of its name, its name, then its bytes.

use std::sync::Arc;

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use scoreland_runtime::engine::NodeCodec;

/// Ballista's nodes and scoreland's.
#[derive(Debug, Default)]
pub(crate) struct Codec {
    ballista: BallistaPhysicalExtensionCodec,
    nodes: Vec<Arc<dyn NodeCodec>>,
}

const BALLISTA: u8 = 0;
const SCORELAND: u8 = 1;

impl Codec {
    pub(crate) fn new(nodes: Vec<Arc<dyn NodeCodec>>) -> Self {
        Codec {
            ballista: BallistaPhysicalExtensionCodec::default(),
            nodes,
        }
    }
}

impl PhysicalExtensionCodec for Codec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let bad = |why: &str| DataFusionError::Internal(format!("a plan node {why}"));
        match buf.split_first() {
            Some((&BALLISTA, rest)) => self.ballista.try_decode(rest, inputs, ctx, converter),
            Some((&SCORELAND, rest)) => {
                let (&len, rest) = rest.split_first().ok_or_else(|| bad("has no name"))?;
                if rest.len() < usize::from(len) {
                    return Err(bad("is cut short"));
                }
                let (name, bytes) = rest.split_at(usize::from(len));
                let node = self
                    .nodes
                    .iter()
                    .find(|n| n.name().as_bytes() == name)
                    .ok_or_else(|| {
                        bad(&format!(
                            "named {:?} is unknown to this process: run the same scoreland on \
                             the client, the scheduler and every executor",
                            String::from_utf8_lossy(name)
                        ))
                    })?;
                node.decode(bytes, inputs)
            }
            _ => Err(bad("has no known tag")),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        for codec in &self.nodes {
            if let Some(bytes) = codec.encode(node.as_ref()) {
                let name = codec.name().as_bytes();
                buf.push(SCORELAND);
                buf.push(u8::try_from(name.len()).map_err(|_| {
                    DataFusionError::Internal(format!("the node name {} is too long", codec.name()))
                })?);
                buf.extend_from_slice(name);
                buf.extend_from_slice(&bytes?);
                return Ok(());
            }
        }
        buf.push(BALLISTA);
        self.ballista.try_encode(node, buf, converter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_proto::physical_plan::DefaultPhysicalProtoConverter;

    #[test]
    fn a_garbled_or_unknown_node_is_refused_naming_why() {
        let codec = Codec::new(Vec::new());
        let ctx = TaskContext::default();
        let decode = |buf: &[u8]| {
            codec
                .try_decode(buf, &[], &ctx, &DefaultPhysicalProtoConverter {})
                .unwrap_err()
                .to_string()
        };
        assert!(decode(&[]).contains("no known tag"));
        assert!(decode(&[7, 1, 2]).contains("no known tag"));
        assert!(decode(&[SCORELAND]).contains("has no name"));
        assert!(decode(&[SCORELAND, 9, b'a']).contains("cut short"));
        let unknown = decode(&[SCORELAND, 3, b'a', b'b', b'c', b'{']);
        assert!(unknown.contains("\"abc\" is unknown"), "{unknown}");
        assert!(unknown.contains("same scoreland"), "{unknown}");
    }
}
