"""The seeds' code, as printed: wrong on purpose. Do not use it; the book measures what goes wrong.

The project grew from two source documents (``seeds/`` in the repository). Their code is kept
here verbatim (only trailing spaces removed, docstrings added) so that Chapter 2's errata section
and ``benchmarks/quantizer_speed.py`` can run it and measure its mistakes:

- ``VQVAEVideoGenerator`` (seed 000): "quantises" with a linear layer and argmax; no gradient
  reaches the encoder; its ``loss`` raises NameError; one code per frame; no commitment term.
- ``VectorQuantizer``, ``Encoder``, ``Decoder``, ``VQVAE`` (seed 004): a one-hot matrix product
  where a lookup would do, and a factor-8 encoder/decoder that turns 28×28 MNIST into 24×24.

The corrected versions are ``vqlib.quantizers.vector``, ``vqlib.tokenizers.vqvae`` and
``vqlib.priors.story_prior``. Each class says what is
wrong with it in its docstring.
"""

# The seeds' code is kept as printed, undefined names included: linters are told to skip this file.
# flake8: noqa
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

# Seed 004's nn.TransformerEncoder (below, as printed) makes PyTorch warn that its layer is not
# batch_first, so the nested-tensor fast path is off: a hint about speed, not one of the seed's
# bugs, and a chapter's page must not print it (the book build treats stderr as an error).
warnings.filterwarnings("ignore", message="enable_nested_tensor is True", category=UserWarning)


# ----------------------------------------------------------------------------- seed 000

class VQVAEVideoGenerator(nn.Module):
    """Seed 000's "VQ-VAE video generator", as printed. Wrong on purpose; do not use.

    - Not vector quantisation: ``vq_layer(z_flat).argmax`` picks the code with the largest score
      of a linear layer, not the codebook vector nearest to z.
    - No gradient reaches the encoder (nor ``vq_layer``): argmax has no gradient and ``z_q`` is
      looked up from ``embedding`` alone, so only the decoder and the codebook learn.
    - It flattens the whole feature map into one vector, so it runs only when the latent map is
      1×1 (8×8 input frames): one code per frame, not one per position.
    - ``loss`` uses ``z_flat`` and ``z_q``, which do not exist in its scope (NameError), and the
      objective has no commitment term.
    - It is a 2D image model, applied to frames one by one: nothing in it models time.
    """
    def __init__(self, num_embeddings, embedding_dim, hidden_dim, frame_size):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.frame_size = frame_size

        # 编码器
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, embedding_dim, kernel_size=4, stride=2, padding=1),
        )

        # 矢量量化
        self.vq_layer = nn.Linear(embedding_dim, num_embeddings)
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)

        # 解码器
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(embedding_dim, 64, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 3, kernel_size=4, stride=2, padding=1),
            nn.Tanh(),
        )

    def forward(self, x):
        # 编码
        z = self.encoder(x)
        z_flat = z.view(z.size(0), -1)
        encoding_indices = self.vq_layer(z_flat).argmax(dim=-1)
        z_q = self.embedding(encoding_indices).view(z.size())

        # 重建
        x_hat = self.decoder(z_q)

        return x_hat, encoding_indices

    def loss(self, x, x_hat, encoding_indices):
        # 编码损失
        loss_encoding = F.mse_loss(z_flat, z_q.detach())

        # 重建损失
        loss_recon = F.mse_loss(x, x_hat)

        return loss_encoding + loss_recon


# ----------------------------------------------------------------------------- seed 004

class VectorQuantizer(nn.Module):
    """Seed 004's vector quantiser, as printed (kept for the benchmark and the errata section).

    Its losses are right (beta on the commitment term), but it is slow and awkward: it builds a
    (N, K) one-hot matrix and multiplies it with the codebook (a second N·K·D matrix product
    forward and a third backward) where a lookup would do, computes ||z||² although argmin does
    not need it, returns indices of shape (N, 1) instead of (B, H, W), and initialises the codebook
    uniformly in ±1/K, a recipe for codebook collapse.
    """
    def __init__(self, num_embeddings, embedding_dim, commitment_cost):
        super(VectorQuantizer, self).__init__()

        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost

        # 初始化嵌入向量
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        self.embedding.weight.data.uniform_(-1/num_embeddings, 1/num_embeddings)

    def forward(self, inputs):
        # 输入形状: [batch_size, embedding_dim, height, width]
        # 变换为: [batch_size, height, width, embedding_dim]
        inputs = inputs.permute(0, 2, 3, 1).contiguous()
        input_shape = inputs.shape

        # 展平输入
        flat_input = inputs.view(-1, self.embedding_dim)

        # 计算L2距离
        distances = (torch.sum(flat_input**2, dim=1, keepdim=True)
                    + torch.sum(self.embedding.weight**2, dim=1)
                    - 2 * torch.matmul(flat_input, self.embedding.weight.t()))

        # 找到最近的嵌入向量
        encoding_indices = torch.argmin(distances, dim=1).unsqueeze(1)
        encodings = torch.zeros(encoding_indices.shape[0], self.num_embeddings, device=inputs.device)
        encodings.scatter_(1, encoding_indices, 1)

        # 量化
        quantized = torch.matmul(encodings, self.embedding.weight).view(input_shape)

        # 计算损失
        e_latent_loss = F.mse_loss(quantized.detach(), inputs)
        q_latent_loss = F.mse_loss(quantized, inputs.detach())
        loss = q_latent_loss + self.commitment_cost * e_latent_loss

        # 直通估计器
        quantized = inputs + (quantized - inputs).detach()

        # 变换回原始形状: [batch_size, embedding_dim, height, width]
        quantized = quantized.permute(0, 3, 1, 2).contiguous()

        return quantized, loss, encoding_indices

class Encoder(nn.Module):
    """Seed 004's encoder, as printed: three stride-2 convolutions, so it downsamples by 8.

    On 28×28 MNIST the maps are 14, 7, then 3 (floor((7 + 2 - 4) / 2) + 1 = 3): a pixel row and
    column are lost, and the decoder's 3 → 6 → 12 → 24 returns 24×24 images.
    """
    def __init__(self, in_channels, hidden_channels, embedding_dim):
        super(Encoder, self).__init__()

        self.conv1 = nn.Conv2d(in_channels, hidden_channels, kernel_size=4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(hidden_channels, hidden_channels, kernel_size=4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(hidden_channels, hidden_channels, kernel_size=4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(hidden_channels, embedding_dim, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = self.conv4(x)
        return x

class Decoder(nn.Module):
    """Seed 004's decoder, as printed: three stride-2 transposed convolutions (×8) and a tanh.

    The tanh outputs [-1, 1] while the book's images lie in [0, 1]; with the encoder above, 28×28
    inputs come back 24×24.
    """
    def __init__(self, embedding_dim, hidden_channels, out_channels):
        super(Decoder, self).__init__()

        self.conv1 = nn.Conv2d(embedding_dim, hidden_channels, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.ConvTranspose2d(hidden_channels, hidden_channels, kernel_size=4, stride=2, padding=1)
        self.conv3 = nn.ConvTranspose2d(hidden_channels, hidden_channels, kernel_size=4, stride=2, padding=1)
        self.conv4 = nn.ConvTranspose2d(hidden_channels, out_channels, kernel_size=4, stride=2, padding=1)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = torch.tanh(self.conv4(x))
        return x

class VQVAE(nn.Module):
    """Seed 004's VQ-VAE, as printed: forward returns (x_recon, loss) with x_recon 24×24 for
    28×28 inputs. Inputs must be padded to a multiple of 8 (e.g. 28 → 32), or use the book's
    factor-4 ``vqlib.tokenizers.vqvae.VQVAE``.
    """
    def __init__(self, in_channels, hidden_channels, embedding_dim, num_embeddings, commitment_cost):
        super(VQVAE, self).__init__()

        self.encoder = Encoder(in_channels, hidden_channels, embedding_dim)
        self.vector_quantizer = VectorQuantizer(num_embeddings, embedding_dim, commitment_cost)
        self.decoder = Decoder(embedding_dim, hidden_channels, in_channels)

    def forward(self, x):
        z = self.encoder(x)
        z_q, loss, _ = self.vector_quantizer(z)
        x_recon = self.decoder(z_q)

        return x_recon, loss


class LatentTransformer(nn.Module):
    """Seed 004's "latent transformer" of the story illustrator, as printed. Wrong on purpose; do not use.

    - No causal mask: ``nn.TransformerEncoder`` is called without ``mask``, so every position
      attends to every other, later ones included.
    - Its input is the text feature followed by ``seq_len - 1`` zeros: it never reads a code, so
      it cannot condition a position on the codes sampled before it; ``forward`` has no argument
      for them.
    - ``output[:, 1:, :]`` drops the text position: ``seq_len=64`` gives 63 logits per image, which
      the illustrator then reshapes to 8×8 (see ``sample_latent_indices``).
    """
    def __init__(self, text_dim, latent_dim, num_embeddings, num_heads=8, num_layers=6):
        super(LatentTransformer, self).__init__()

        self.text_proj = nn.Linear(text_dim, latent_dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, 256, latent_dim))  # 假设最大256个潜在代码

        encoder_layer = nn.TransformerEncoderLayer(d_model=latent_dim, nhead=num_heads)
        self.transformer = nn.TransformerEncoder(encoder_layer, num_layers=num_layers)

        self.output_proj = nn.Linear(latent_dim, num_embeddings)

    def forward(self, text_features, seq_len=64):  # 8x8=64个潜在代码
        batch_size = text_features.shape[0]

        # 投影文本特征
        text_features = self.text_proj(text_features).unsqueeze(1)  # [B, 1, D]

        # 创建位置嵌入
        pos_emb = self.pos_embedding[:, :seq_len, :]

        # 创建输入序列（文本特征 + 位置嵌入）
        input_seq = torch.cat([text_features, torch.zeros(batch_size, seq_len-1, text_features.shape[-1], device=text_features.device)], dim=1)
        input_seq = input_seq + pos_emb

        # 通过Transformer
        output = self.transformer(input_seq.transpose(0, 1)).transpose(0, 1)  # [B, seq_len, D]

        # 预测潜在代码
        logits = self.output_proj(output[:, 1:, :])  # 排除文本特征位置

        return logits


def sample_latent_indices(latent_transformer, text_features, temperature=1.0):
    """The sampling lines of seed 004's ``StoryIllustrator.generate_illustration``, as printed (the
    VQ-VAE decoding after them left out). One forward pass, then every position drawn on its own from
    its logits: the comment says "autoregressive generation", but no draw sees another. The final
    ``reshape(-1, 8, 8)`` of 63 codes per image fails for one image and, for 64 images, silently
    deals the codes of 64 images into 63 grids."""
    with torch.no_grad():
        # 生成潜在代码
        logits = latent_transformer(text_features)

        # 采样潜在代码（自回归生成）
        latent_indices = []
        for i in range(logits.shape[1]):
            probs = F.softmax(logits[:, i, :] / temperature, dim=-1)
            next_token = torch.multinomial(probs, 1)
            latent_indices.append(next_token)

        latent_indices = torch.cat(latent_indices, dim=1)  # [B, seq_len]

        # 重塑为空间结构（例如8x8）
        latent_indices = latent_indices.reshape(-1, 8, 8)

        return latent_indices
