"""DSR's six networks, laid out so that the authors' released state dicts load key for key.

The attribute names (`_vq_vae_top`, `_decoder_b`, `upsample_t`, `unet.encoder.block1`, ...) are the authors' and are
kept as they are, odd ones included, because they are the state-dict keys of the released checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from draem.layers import PooledEncoder
from draem.methods import processes

UNET_WIDTH = 64  # base width of the anomaly-detection and upsampling U-Nets, fixed in the authors' code
OBJECT_LATENT = 64  # channels of the object-specific decoder's bottleneck, fixed in the authors' code


@dataclass(frozen=True)
class DsrConfig:
    """Sizes of the discrete latent model and its decoders; the defaults are the paper's."""

    num_hiddens: int = 128
    num_residual_layers: int = 2
    num_residual_hiddens: int = 64
    num_embeddings: int = 4096
    embedding_dim: int = 128
    commitment_cost: float = 0.25
    decay: float = 0.99
    unet_width: int = UNET_WIDTH


# --------------------------------------------------------------------------------------------------------------------
# Vector quantiser


class Quantized(NamedTuple):
    """A vector quantiser's output: straight-through codes, commitment loss, code-usage perplexity, code indices,
    and in training mode how often each code was chosen in the batch of all processes (None in eval mode)."""

    quantized: torch.Tensor
    loss: torch.Tensor
    perplexity: torch.Tensor
    indices: torch.Tensor
    counts: torch.Tensor | None = None


class VectorQuantizerEMA(nn.Module):
    """Nearest-code quantiser of (B, D, H, W) features whose codebook follows an exponential moving average."""

    def __init__(self, num_embeddings: int, embedding_dim: int, commitment_cost: float = 0.25, decay: float = 0.99,
                 epsilon: float = 1e-5) -> None:
        super().__init__()
        self._num_embeddings = num_embeddings
        self._embedding_dim = embedding_dim
        self._commitment_cost = commitment_cost
        self._decay = decay
        self._epsilon = epsilon
        # The codebook and the EMA sums are maintained by `_ema_update`, never by gradients.
        self._embedding = nn.Embedding(num_embeddings, embedding_dim)
        nn.init.normal_(self._embedding.weight)
        self._embedding.weight.requires_grad_(False)
        self.register_buffer("_ema_cluster_size", torch.zeros(num_embeddings))
        self._ema_w = nn.Parameter(torch.randn(num_embeddings, embedding_dim), requires_grad=False)

    @property
    def codebook(self) -> torch.Tensor:
        """The (K, D) code vectors."""
        return self._embedding.weight

    def distances(self, inputs: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distances (B, H, W, K), in fp32 and without gradient, of every feature to every code."""
        with torch.no_grad(), torch.autocast(inputs.device.type, enabled=False):
            flat = inputs.detach().float().permute(0, 2, 3, 1).reshape(-1, self._embedding_dim)
            codes = self.codebook.float()
            squared = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2.0 * flat @ codes.t()
        b, _, h, w = inputs.shape
        return squared.view(b, h, w, self._num_embeddings)

    def rank_codes(self, inputs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k nearest codes of every feature, nearest first: distances and indices, each (B, H, W, k)."""
        return torch.topk(self.distances(inputs), k, dim=-1, largest=False)

    def nearest(self, inputs: torch.Tensor) -> torch.Tensor:
        """Index (B, H, W) of the nearest code of every feature."""
        return self.distances(inputs).argmin(dim=-1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, D, H, W) for indices (B, H, W)."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2).contiguous()

    def forward(self, inputs: torch.Tensor) -> Quantized:
        indices = self.nearest(inputs)
        codes = self.lookup(indices).to(inputs.dtype)
        counts = self._ema_update(inputs, indices) if self.training else None
        loss = self._commitment_cost * F.mse_loss(inputs, codes.detach())
        quantized = inputs + (codes - inputs).detach()  # straight-through: identity gradient to the inputs
        usage = torch.bincount(indices.flatten(), minlength=self._num_embeddings).float() / indices.numel()
        perplexity = torch.exp(-(usage * torch.log(usage + 1e-10)).sum())
        return Quantized(quantized, loss, perplexity, indices, counts)

    @torch.no_grad()
    def _ema_update(self, inputs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Move each code to the decayed running mean of the features assigned to it (Laplace-smoothed counts).

        In fp32; under torchrun the batch's counts and sums are summed over the processes first, so every process
        keeps the codebook that one process would keep on the whole global batch. Returns those counts (K,).
        """
        with torch.autocast(inputs.device.type, enabled=False):
            flat = inputs.detach().float().permute(0, 2, 3, 1).reshape(-1, self._embedding_dim)
            statistics = torch.zeros(self._num_embeddings, 1 + self._embedding_dim, device=flat.device)
            statistics[:, 0] = torch.bincount(indices.flatten(), minlength=self._num_embeddings)
            statistics[:, 1:].index_add_(0, indices.flatten(), flat)
            counts, sums = processes.sum_over_processes(statistics).split([1, self._embedding_dim], dim=1)
            size = self._ema_cluster_size
            size.mul_(self._decay).add_(counts[:, 0], alpha=1.0 - self._decay)
            total = size.sum()
            size.copy_((size + self._epsilon) / (total + self._num_embeddings * self._epsilon) * total)
            self._ema_w.mul_(self._decay).add_(sums, alpha=1.0 - self._decay)
            self._embedding.weight.copy_(self._ema_w / size.unsqueeze(1))
        return counts[:, 0]

    @torch.no_grad()
    def restart(self, codes: torch.Tensor, vectors: torch.Tensor) -> None:
        """Put codes (indices) at new vectors (one per code) with an EMA count of one; then share process 0's."""
        vectors = vectors.to(self._ema_w.dtype)
        self._embedding.weight[codes] = vectors
        self._ema_w[codes] = vectors
        self._ema_cluster_size[codes] = 1.0
        processes.share_first_process(self._embedding.weight, self._ema_w, self._ema_cluster_size)


# --------------------------------------------------------------------------------------------------------------------
# Discrete latent model (the general appearance model)


class Residual(nn.Module):
    """relu(x) + conv1x1(relu(conv3x3(relu(x)))), both convolutions without bias."""

    def __init__(self, channels: int, num_residual_hiddens: int) -> None:
        super().__init__()
        self._block = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, num_residual_hiddens, 3, padding=1, bias=False),
                                    nn.ReLU(), nn.Conv2d(num_residual_hiddens, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The authors' block starts with an in-place ReLU, so the skip path carries relu(x), not x.
        x = F.relu(x)
        return x + self._block(x)


class ResidualStack(nn.Module):
    """`num_residual_layers` residual blocks, then a ReLU."""

    def __init__(self, channels: int, num_residual_layers: int, num_residual_hiddens: int) -> None:
        super().__init__()
        self._layers = nn.ModuleList([Residual(channels, num_residual_hiddens) for _ in range(num_residual_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._layers:
            x = layer(x)
        return F.relu(x)


class EncoderBot(nn.Module):
    """Image (B, 3, H, W) -> features at 1/4 resolution: two 4x4 stride-2 convolutions, a 3x3 one, residual stack."""

    def __init__(self, in_channels: int, num_hiddens: int, num_residual_layers: int, num_residual_hiddens: int) -> None:
        super().__init__()
        self._conv_1 = nn.Conv2d(in_channels, num_hiddens // 2, 4, stride=2, padding=1)
        self._conv_2 = nn.Conv2d(num_hiddens // 2, num_hiddens, 4, stride=2, padding=1)
        self._conv_3 = nn.Conv2d(num_hiddens, num_hiddens, 3, padding=1)
        self._residual_stack = ResidualStack(num_hiddens, num_residual_layers, num_residual_hiddens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self._conv_1(x))
        x = F.relu(self._conv_2(x))
        return self._residual_stack(self._conv_3(x))


class EncoderTop(nn.Module):
    """Features at 1/4 resolution -> 1/8: a 4x4 stride-2 convolution, a 3x3 one, residual stack."""

    def __init__(self, in_channels: int, num_hiddens: int, num_residual_layers: int, num_residual_hiddens: int) -> None:
        super().__init__()
        self._conv_1 = nn.Conv2d(in_channels, num_hiddens, 4, stride=2, padding=1)
        self._conv_2 = nn.Conv2d(num_hiddens, num_hiddens, 3, padding=1)
        self._residual_stack = ResidualStack(num_hiddens, num_residual_layers, num_residual_hiddens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self._conv_1(x))
        x = F.relu(self._conv_2(x))
        return self._residual_stack(x)


class DecoderBot(nn.Module):
    """Joined codes at 1/4 resolution -> image: 3x3 convolution, residual stack, two 4x4 stride-2 transposed ones."""

    def __init__(self, in_channels: int, num_hiddens: int, num_residual_layers: int, num_residual_hiddens: int) -> None:
        super().__init__()
        self._conv_1 = nn.Conv2d(in_channels, num_hiddens, 3, padding=1)
        self._residual_stack = ResidualStack(num_hiddens, num_residual_layers, num_residual_hiddens)
        self._conv_trans_1 = nn.ConvTranspose2d(num_hiddens, num_hiddens // 2, 4, stride=2, padding=1)
        self._conv_trans_2 = nn.ConvTranspose2d(num_hiddens // 2, 3, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._residual_stack(self._conv_1(x))
        return self._conv_trans_2(F.relu(self._conv_trans_1(x)))


class Encoded(NamedTuple):
    """The discrete latent model's encoding: pre-quantisation features and quantiser outputs of both levels."""

    features_lo: torch.Tensor
    lo: Quantized
    features_hi: torch.Tensor
    hi: Quantized


class LatentOutput(NamedTuple):
    """The discrete latent model's output, in the authors' order."""

    loss_hi: torch.Tensor
    loss_lo: torch.Tensor
    image: torch.Tensor
    quantized_lo: torch.Tensor
    quantized_hi: torch.Tensor


class DiscreteLatentModel(nn.Module):
    """Two-level VQ model: K_lo codes at 1/8 resolution (`_vq_vae_top`), K_hi at 1/4 (`_vq_vae_bot`), one decoder."""

    def __init__(self, num_hiddens: int, num_residual_layers: int, num_residual_hiddens: int, num_embeddings: int,
                 embedding_dim: int, commitment_cost: float = 0.25, decay: float = 0.99) -> None:
        super().__init__()
        stack = (num_residual_layers, num_residual_hiddens)
        self._encoder_t = EncoderTop(num_hiddens, num_hiddens, *stack)
        self._encoder_b = EncoderBot(3, num_hiddens, *stack)
        self._pre_vq_conv_bot = nn.Conv2d(num_hiddens + embedding_dim, embedding_dim, 1)
        self._pre_vq_conv_top = nn.Conv2d(num_hiddens, embedding_dim, 1)
        self._vq_vae_top = VectorQuantizerEMA(num_embeddings, embedding_dim, commitment_cost, decay)
        self._vq_vae_bot = VectorQuantizerEMA(num_embeddings, embedding_dim, commitment_cost, decay)
        self._decoder_b = DecoderBot(2 * embedding_dim, num_hiddens, *stack)
        self.upsample_t = nn.ConvTranspose2d(embedding_dim, embedding_dim, 4, stride=2, padding=1)

    @classmethod
    def from_config(cls, config: DsrConfig) -> DiscreteLatentModel:
        """Built from a `DsrConfig`."""
        return cls(config.num_hiddens, config.num_residual_layers, config.num_residual_hiddens,
                   config.num_embeddings, config.embedding_dim, config.commitment_cost, config.decay)

    @property
    def quantizer_lo(self) -> VectorQuantizerEMA:
        """K_lo, the 1/8-resolution codebook."""
        return self._vq_vae_top

    @property
    def quantizer_hi(self) -> VectorQuantizerEMA:
        """K_hi, the 1/4-resolution codebook."""
        return self._vq_vae_bot

    def join(self, quantized_lo: torch.Tensor, quantized_hi: torch.Tensor) -> torch.Tensor:
        """cat(upsampled Q_lo, Q_hi) at 1/4 resolution, the input of both image decoders."""
        return torch.cat((self.upsample_t(quantized_lo), quantized_hi), dim=1)

    def decode(self, quantized_lo: torch.Tensor, quantized_hi: torch.Tensor) -> torch.Tensor:
        """The general-appearance image of a pair of quantised maps."""
        return self._decoder_b(self.join(quantized_lo, quantized_hi))

    def encode_lo(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bottom encoder's features at 1/4 resolution, pre-quantisation F_lo at 1/8) of images."""
        encoded = self._encoder_b(x)
        return encoded, self._pre_vq_conv_top(self._encoder_t(encoded))

    def encode_hi(self, encoded: torch.Tensor, quantized_lo: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation F_hi from the bottom encoder's features and the Q_lo codes."""
        return self._pre_vq_conv_bot(torch.cat((encoded, self.upsample_t(quantized_lo)), dim=1))

    def encode(self, x: torch.Tensor) -> Encoded:
        """Both levels' features and codes (the quantisers update their EMA codebooks in training mode)."""
        encoded, features_lo = self.encode_lo(x)
        lo = self._vq_vae_top(features_lo)
        features_hi = self.encode_hi(encoded, lo.quantized)
        return Encoded(features_lo, lo, features_hi, self._vq_vae_bot(features_hi))

    def forward(self, x: torch.Tensor) -> LatentOutput:
        encoded = self.encode(x)
        image = self.decode(encoded.lo.quantized, encoded.hi.quantized)
        return LatentOutput(encoded.hi.loss, encoded.lo.loss, image, encoded.lo.quantized, encoded.hi.quantized)


# --------------------------------------------------------------------------------------------------------------------
# U-Net pieces (InstanceNorm without affine parameters, so only convolutions hold weights)


class InstanceNorm(nn.InstanceNorm2d):
    """InstanceNorm2d that also takes 1x1 maps, giving their normalised value, zero, where PyTorch refuses them.

    Only tiny images meet it (at 32 px the lo subspace module's bottleneck is 1x1); from 64 px on it is never used.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] == 1:
            return torch.zeros_like(x)
        return super().forward(x)


def _conv_in_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), InstanceNorm(c_out), nn.ReLU(inplace=True)]


def _double(c_in: int, c_out: int, c_mid: int | None = None) -> nn.Sequential:
    """conv-IN-ReLU twice: c_in -> c_mid -> c_out (c_mid defaults to c_out)."""
    c_mid = c_out if c_mid is None else c_mid
    return nn.Sequential(*_conv_in_relu(c_in, c_mid), *_conv_in_relu(c_mid, c_out))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """Bilinear x2 upsampling (align_corners=True), then conv-IN-ReLU."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *_conv_in_relu(c_in, c_out))


class _Encoder(PooledEncoder):
    """Conv-IN-ReLU pairs of the given widths with 2x2 max-pools between them; returns every block's output."""

    def __init__(self, in_channels: int, widths: list[int]) -> None:
        super().__init__(in_channels, widths, _double)


class _FeatureDecoder(nn.Module):
    """Two upsampling stages from the 1/4-size bottleneck, without skip connections."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.up2 = _up(4 * width, 2 * width)
        self.db2 = _double(2 * width, 2 * width)
        self.up3 = _up(2 * width, width)
        self.db3 = _double(width, width)
        self.fin_out = nn.Sequential(nn.Conv2d(width, out_channels, 3, padding=1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.db2(self.up2(features[-1]))
        return self.fin_out(self.db3(self.up3(x)))


class _SkipDecoder(nn.Module):
    """Three upsampling stages; each concatenates (upsampled, encoder feature) before its double convolution."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.up1 = _up(4 * width, 4 * width)
        self.db1 = _double(8 * width, 4 * width)
        self.up2 = _up(4 * width, 2 * width)
        self.db2 = _double(4 * width, 2 * width)
        self.up3 = _up(2 * width, width)
        self.db3 = _double(2 * width, width)
        self.fin_out = nn.Sequential(nn.Conv2d(width, out_channels, 3, padding=1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        b1, b2, b3, b4 = features
        x = self.db1(torch.cat((self.up1(b4), b3), dim=1))
        x = self.db2(torch.cat((self.up2(x), b2), dim=1))
        x = self.db3(torch.cat((self.up3(x), b1), dim=1))
        return self.fin_out(x)


class _EncoderDecoder(nn.Module):
    """`encoder` then `decoder` (the authors' `unet`)."""

    def __init__(self, encoder: _Encoder, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _unet(in_channels: int, out_channels: int, width: int = UNET_WIDTH) -> _EncoderDecoder:
    """Four-level U-Net with skips (widths w, 2w, 4w, 4w), as in the detection and upsampling modules."""
    return _EncoderDecoder(_Encoder(in_channels, [width, 2 * width, 4 * width, 4 * width]),
                           _SkipDecoder(width, out_channels))


# --------------------------------------------------------------------------------------------------------------------
# The object-specific modules


class SubspaceRestrictionModule(nn.Module):
    """Maps quantised features (B, D, h, w) to non-anomalous ones, then re-quantises them with the given codebook."""

    def __init__(self, embedding_dim: int = 128) -> None:
        super().__init__()
        w = embedding_dim
        self.unet = _EncoderDecoder(_Encoder(embedding_dim, [w, 2 * w, 4 * w]), _FeatureDecoder(w, embedding_dim))

    def forward(self, x: torch.Tensor, quantizer: VectorQuantizerEMA) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor]:
        """(restricted features, their quantisation, the quantiser's commitment loss)."""
        features = self.unet(x)
        quantized = quantizer(features)
        return features, quantized.quantized, quantized.loss


class Restored(NamedTuple):
    """The subspace restriction modules' output on both levels and the object-specific decoder's image."""

    features_lo: torch.Tensor
    quantized_lo: torch.Tensor
    features_hi: torch.Tensor
    quantized_hi: torch.Tensor
    object_image: torch.Tensor


class ImageReconstructionNetwork(nn.Module):
    """Object-specific appearance decoder: joined codes (B, 2D, H/4, W/4) -> image (B, 3, H, W)."""

    def __init__(self, in_channels: int, num_hiddens: int, num_residual_layers: int, num_residual_hiddens: int) -> None:
        super().__init__()
        c = in_channels
        self.block1 = _double(c, 2 * c, c_mid=c)
        self.mp1 = nn.Sequential(nn.MaxPool2d(2))
        self.block2 = _double(2 * c, 4 * c, c_mid=2 * c)
        self.mp2 = nn.Sequential(nn.MaxPool2d(2))
        self.pre_vq_conv = nn.Conv2d(4 * c, OBJECT_LATENT, 1)
        self.upblock1 = nn.ConvTranspose2d(OBJECT_LATENT, OBJECT_LATENT, 4, stride=2, padding=1)
        self.upblock2 = nn.ConvTranspose2d(OBJECT_LATENT, OBJECT_LATENT, 4, stride=2, padding=1)
        self._conv_1 = nn.Conv2d(OBJECT_LATENT, num_hiddens, 3, padding=1)
        self._residual_stack = ResidualStack(num_hiddens, num_residual_layers, num_residual_hiddens)
        self._conv_trans_1 = nn.ConvTranspose2d(num_hiddens, num_hiddens // 2, 4, stride=2, padding=1)
        self._conv_trans_2 = nn.ConvTranspose2d(num_hiddens // 2, 3, 4, stride=2, padding=1)

    @classmethod
    def from_config(cls, config: DsrConfig) -> ImageReconstructionNetwork:
        """Built from a `DsrConfig` (its input is the two joined code maps, 2 x embedding_dim channels)."""
        return cls(2 * config.embedding_dim, config.num_hiddens, config.num_residual_layers,
                   config.num_residual_hiddens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mp2(self.block2(self.mp1(self.block1(x))))
        x = self.pre_vq_conv(x)
        x = F.relu(self.upblock2(F.relu(self.upblock1(x))))
        x = self._residual_stack(self._conv_1(x))
        return self._conv_trans_2(F.relu(self._conv_trans_1(x)))


class AnomalyDetectionModule(nn.Module):
    """U-Net on cat(object image, general image): (B, 6, H, W) -> 2-channel logits."""

    def __init__(self, width: int = UNET_WIDTH) -> None:
        super().__init__()
        self.unet = _unet(6, 2, width)

    def forward(self, object_image: torch.Tensor, general_image: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat((object_image, general_image), dim=1))


class UpsamplingModule(nn.Module):
    """U-Net on cat(object image, general image, anomaly softmax): (B, 8, H, W) -> refined 2-channel logits."""

    def __init__(self, width: int = UNET_WIDTH) -> None:
        super().__init__()
        self.unet = _unet(8, 2, width)

    def forward(self, object_image: torch.Tensor, general_image: torch.Tensor,
                anomaly_probabilities: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat((object_image, general_image, anomaly_probabilities), dim=1))


# --------------------------------------------------------------------------------------------------------------------
# All six together, and the test-time path


class DsrNetworks(nn.Module):
    """The six networks; each attribute's state dict is the authors' checkpoint of that module."""

    def __init__(self, config: DsrConfig | None = None) -> None:
        super().__init__()
        config = DsrConfig() if config is None else config
        self.config = config
        self.vq = DiscreteLatentModel.from_config(config)
        self.subspace_hi = SubspaceRestrictionModule(config.embedding_dim)
        self.subspace_lo = SubspaceRestrictionModule(config.embedding_dim)
        self.object_decoder = ImageReconstructionNetwork.from_config(config)
        self.anomaly_detection = AnomalyDetectionModule(config.unet_width)
        self.upsampling = UpsamplingModule(config.unet_width)

    def forward(self, image: torch.Tensor, score_window: int = 21) -> dict[str, torch.Tensor]:
        return dsr_inference(self, image, score_window)

    def restore(self, quantized_lo: torch.Tensor, quantized_hi: torch.Tensor) -> Restored:
        """Both levels' codes restricted to the object's subspace, and the object-specific decoder's image of them."""
        features_hi, restored_hi, _ = self.subspace_hi(quantized_hi, self.vq.quantizer_hi)
        features_lo, restored_lo, _ = self.subspace_lo(quantized_lo, self.vq.quantizer_lo)
        object_image = self.object_decoder(self.vq.join(restored_lo, restored_hi))
        return Restored(features_lo, restored_lo, features_hi, restored_hi, object_image)


def image_scores(anomaly_probabilities: torch.Tensor, window: int = 21) -> torch.Tensor:
    """Per image, the max of the window x window mean-filtered anomaly channel (zero padding counted in the mean)."""
    smoothed = F.avg_pool2d(anomaly_probabilities[:, 1:], window, stride=1, padding=window // 2)
    return smoothed.flatten(1).amax(dim=1)


def dsr_inference(networks: DsrNetworks, image: torch.Tensor, score_window: int = 21) -> dict[str, torch.Tensor]:
    """The authors' test-time path on images (B, 3, H, W) in [0, 1]; every intermediate by name."""
    vq = networks.vq
    latent = vq(image)
    restored = networks.restore(latent.quantized_lo, latent.quantized_hi)
    general_image = vq.decode(latent.quantized_lo, latent.quantized_hi)
    detection = networks.anomaly_detection(restored.object_image, general_image)
    probabilities = torch.softmax(detection, dim=1)
    upsampled = networks.upsampling(restored.object_image, general_image, probabilities)
    return {
        "quantized_lo": latent.quantized_lo,
        "quantized_hi": latent.quantized_hi,
        "general_image_from_input": latent.image,
        "subspace_hi_features": restored.features_hi,
        "subspace_hi_quantized": restored.quantized_hi,
        "subspace_lo_features": restored.features_lo,
        "subspace_lo_quantized": restored.quantized_lo,
        "object_image": restored.object_image,
        "general_image": general_image,
        "anomaly_detection_logits": detection,
        "upsampling_logits": upsampled,
        "image_score": image_scores(probabilities, score_window),
    }
