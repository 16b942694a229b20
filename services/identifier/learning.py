"""In-process identifier: crossing detection and identity learning over one job's image store.

Implements :class:`shoal.identity_requests.IdentifierClient`. Identity learning follows idtracker.ai v6
(Torrents et al. 2025; method notes §5.2): the contrastive route first; its per-fragment votes are
then put through the accumulation acceptance test (certain, unique within each global fragment,
consistent with coexisting fragments). If at least half of the images in global fragments pass,
or there is no global fragment to test against, the contrastive answer stands; otherwise the
accepted fragments seed the classic accumulation (notes §5.3), which gives the final answer.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from services.identifier import accumulation, contrastive, crossing_detector, transfer
from services.identifier.accumulation import Fragments
from services.identifier.networks import pick_device, read_rows
from shoal.identity_requests import CrossingReply, CrossingRequest, IdentityReply, IdentityRequest, Progress

MIN_CONTRASTIVE_ACCEPTED = 0.5  # v6 CONTRASTIVE_MIN_ACCUMULATION


class LocalIdentifier:
    """Identifier over ``images`` (uint8 [n_images, s, s], row = image id; a memmap is fine)."""

    def __init__(self, images: np.ndarray, device: str | None = None,
                 settings: contrastive.ContrastiveSettings | None = None):
        self.images = images
        self.device = pick_device(device)
        self.settings = settings or contrastive.ContrastiveSettings()
        self._earlier: transfer.Transferred | None = None  # knowledge transfer's model, per request
        self._trained: tuple[str, torch.nn.Module, torch.Tensor | None] | None = None  # the answer's model

    def classify_crossings(self, request: CrossingRequest, progress: Progress | None = None) -> CrossingReply:
        with _deterministic():
            reply = crossing_detector.train_and_classify(self.images, request, str(self.device))
        if progress is not None:
            progress("crossing detector", 1.0, {})
        return reply

    def learn_identities(self, request: IdentityRequest, progress: Progress | None = None) -> IdentityReply:
        n = request.n_animals
        n_images = len(request.fragment_ids)
        if n == 1:
            return IdentityReply(np.ones((n_images, 1), np.float32), method="trivial", notes=["single animal"])
        fragments = Fragments.build(request.fragment_offsets, request.fragment_ids, request.fragment_frames,
                                    request.global_fragments, n)
        self._earlier, self._trained = None, None
        if len(request.knowledge):
            self._earlier = transfer.load(request.knowledge, self.device)
            side = self.images.shape[1]
            if (self._earlier.crop_side, self._earlier.n_animals) != (side, n):
                raise ValueError(f"knowledge_transfer_folder: the earlier model has {self._earlier.n_animals} animals "
                                 f"and {self._earlier.crop_side} px images; this job {n} animals and {side} px")
        with _deterministic():
            if request.method == "accumulation":
                reply = self._accumulation(request, fragments, None, [], progress)
            elif request.method == "contrastive":
                reply = self._contrastive(request, fragments, progress)
            else:
                raise ValueError(f"unknown identification method {request.method!r}")
            return self._keep_model(reply, request)

    def _keep_model(self, reply: IdentityReply, request: IdentityRequest) -> IdentityReply:
        """Name identities after the earlier session's (knowledge transfer) and attach the model."""
        if self._trained is None:
            return reply
        kind, model, centres = self._trained
        if self._earlier is not None:
            earlier = transfer.predict(self._earlier, self.images, np.asarray(request.fragment_ids, np.int64))
            order, score = transfer.match_identities(reply.probabilities, earlier)
            reply.probabilities = reply.probabilities[:, order]
            model, centres = transfer.permuted(kind, model, centres, order)
            reply.transfer_score = score
            reply.notes.append(f"knowledge transfer: identities matched to the earlier session's, the earlier "
                               f"model agreeing on {score:.3f} of images")
        reply.model = transfer.model_file(kind, model, centres, request.n_animals, self.images.shape[1])
        return reply

    def _contrastive(self, request: IdentityRequest, fragments: Fragments, progress: Progress | None) -> IdentityReply:
        n = request.n_animals
        rng = np.random.default_rng(request.seed)
        long = np.flatnonzero(fragments.n_images >= contrastive.MIN_FRAGMENT_IMAGES)
        position = np.full(len(fragments.n_images), -1)
        position[long] = np.arange(len(long))
        pairs = contrastive.coexisting_pairs(fragments.frames[long])
        has_gf = len(fragments.global_fragments) > 0
        if len(pairs) == 0:
            note = "no coexisting fragments: contrastive learning has no negative pairs"
            if has_gf:
                return self._accumulation(request, fragments, None, [note + "; used accumulation"], progress)
            uniform = np.full((len(request.fragment_ids), n), 1.0 / n, np.float32)
            return IdentityReply(uniform, method="none", notes=[note + " and there is no global fragment"])

        ids_per_fragment = _subsample([fragments.images_of(f) for f in long], accumulation.MAX_IMAGES_PER_ANIMAL * n)
        store_ids = np.concatenate(ids_per_fragment)
        local = np.split(np.arange(len(store_ids)), np.cumsum([len(i) for i in ids_per_fragment])[:-1])
        images = torch.from_numpy(read_rows(self.images, store_ids))
        first_gf = fragments.best_global_fragment() if has_gf else None
        init = None
        if first_gf is not None and (position[fragments.global_fragments[first_gf]] >= 0).all():
            init = position[fragments.global_fragments[first_gf]]
        result = contrastive.train_contrastive(images, local, pairs, n, rng, request.seed, self.device,
                                               init_fragments=init, settings=self.settings, progress=progress,
                                               init_state=transfer.initial_state(self._earlier, transfer.CONTRASTIVE))
        self._trained = (transfer.CONTRASTIVE, result.model, result.centres)
        probabilities = self._embed_all(result, request)
        notes = [f"contrastive: {result.steps} steps, silhouette {result.silhouette:.3f} ({result.stop_reason})"]
        if not has_gf:
            notes.append("no global fragment: contrastive answer used as is")
            return IdentityReply(probabilities, "contrastive", result.silhouette, notes=notes)

        p1, certainty = accumulation.fragment_statistics(probabilities, fragments.offsets)
        probabilities, p1, permutation = _align_to_global_fragment(probabilities, p1,
                                                                   fragments.global_fragments[first_gf])
        self._trained = (transfer.CONTRASTIVE, result.model, result.centres[torch.as_tensor(permutation)])
        identity = np.full(len(p1), -1)
        order = fragments.accumulation_order(first_gf)
        sure = certainty >= accumulation.CERTAINTY_THRESHOLD
        while True:
            updated = accumulation.accept_identities(identity, p1, sure, fragments, order)
            if np.array_equal(updated, identity):
                break
            identity = updated
        ratio = accumulation.accumulation_ratio(identity, fragments)
        if ratio >= MIN_CONTRASTIVE_ACCEPTED:
            notes.append(f"{ratio:.3f} of images in global fragments accepted from the contrastive assignment")
            return IdentityReply(probabilities, "contrastive", result.silhouette, ratio, notes)
        notes.append(
            f"contrastive silhouette {result.silhouette:.2f}: only {ratio:.3f} of images in global fragments "
            f"acceptable (< {MIN_CONTRASTIVE_ACCEPTED}); continued with accumulation"
        )
        reply = self._accumulation(request, fragments, identity, notes, progress)
        reply.silhouette = result.silhouette
        return reply

    def _embed_all(self, result: contrastive.ContrastiveResult, request: IdentityRequest) -> np.ndarray:
        ids = np.asarray(request.fragment_ids, np.int64)
        out = np.zeros((len(ids), request.n_animals), np.float32)
        for start in range(0, len(ids), accumulation.PREDICTION_CHUNK):
            rows = torch.from_numpy(read_rows(self.images, ids[start : start + accumulation.PREDICTION_CHUNK]))
            out[start : start + len(rows)] = contrastive.embedding_probabilities(result.model, result.centres, rows)
        return out

    def _accumulation(self, request: IdentityRequest, fragments: Fragments, seed_identity: np.ndarray | None,
                      notes: list[str], progress: Progress | None) -> IdentityReply:
        n = request.n_animals
        method = "accumulation" if request.method == "accumulation" else "contrastive+accumulation"
        if len(fragments.global_fragments) == 0:
            uniform = np.full((len(request.fragment_ids), n), 1.0 / n, np.float32)
            return IdentityReply(uniform, "none", notes=notes + ["accumulation needs a global fragment; none given"])
        first = fragments.best_global_fragment()
        if seed_identity is None or len(np.unique(seed_identity[seed_identity >= 0])) < n:
            if seed_identity is not None:
                notes.append("accepted contrastive fragments miss some identity; seeded from the best global fragment")
            seed_identity = np.full(len(fragments.n_images), -1)
            seed_identity[fragments.global_fragments[first]] = np.arange(n)
        rng = np.random.default_rng(request.seed)
        result = accumulation.accumulate(self.images, fragments, n, seed_identity, rng, request.seed, self.device,
                                         progress, first_global_fragment=first,
                                         init_state=transfer.initial_state(self._earlier, transfer.CLASSIFIER))
        self._trained = (transfer.CLASSIFIER, result.model, None)
        probabilities = accumulation.predict_images(result.model, self.images, np.asarray(request.fragment_ids))
        return IdentityReply(probabilities, method, ratio_accumulated=result.ratio, notes=notes + result.notes)


def _subsample(ids_per_fragment: list[np.ndarray], cap: int) -> list[np.ndarray]:
    """Evenly thin every fragment so all together hold at most ``cap`` images (cost ∝ N, not video length)."""
    total = sum(len(i) for i in ids_per_fragment)
    if total <= cap:
        return ids_per_fragment
    keep = cap / total
    return [i[np.linspace(0, len(i) - 1, max(2, int(np.ceil(len(i) * keep)))).astype(np.int64)]
            for i in ids_per_fragment]


def _align_to_global_fragment(probabilities: np.ndarray, p1: np.ndarray, members: np.ndarray):
    """Rename clusters so the first global fragment's fragment k is identity k (Hungarian matching).

    Returns the renamed probabilities and P1, and the permutation (new column k = old column perm[k]).
    """
    _, columns = linear_sum_assignment(-p1[members])
    permutation = np.empty_like(columns)
    permutation[np.arange(len(columns))] = columns
    return probabilities[:, permutation], p1[:, permutation], permutation


class _deterministic:
    """Deterministic torch kernels while learning (warn-only where none exists), restored after."""

    def __enter__(self):
        self.previous = (torch.are_deterministic_algorithms_enabled(),
                         torch.is_deterministic_algorithms_warn_only_enabled())
        torch.use_deterministic_algorithms(True, warn_only=True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.previous[0], warn_only=self.previous[1])
