"""Model intake: tracing ``nn.Module`` (torch.fx), TorchScript and ONNX into the lipbound graph IR."""

from lipbound.graph.ir import Graph, Node
from lipbound.graph.trace import trace

__all__ = ["Graph", "Node", "trace"]
