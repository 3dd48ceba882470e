"""The methods a run can compare, and what each asks of clients and server.

``pruning`` says how a client builds its personal mask during training (``none``,
``magnitude``, ``movement``, ``random``, ``structured``: whole units, squeezed); the server
aggregates pruned methods per entry over the clients that keep it, and dense methods with
Flower's FedAvg mean. ``post_training`` methods train dense and prune only when a client
builds its personal model for evaluation (units chosen by ``selector``). A method that
``trains_like`` another draws the same seeds for local training, so with the same config
its global models are those of the other method and the comparison is paired.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One federated method."""

    name: str
    summary: str
    pruning: str = "none"
    scope: str = "layer"
    selector: str = ""
    finetune: bool = False
    federated: bool = True
    small_dense: bool = False
    post_training: bool = False
    trains_like: str = ""  # a method whose local training (data order included) this one repeats

    @property
    def aggregation(self) -> str:
        """``masked`` for pruned methods, ``dense`` otherwise."""
        return "dense" if self.pruning == "none" else "masked"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("fedavg", "dense FedAvg (McMahan et al. 2017); no pruning"),
        Method("fedavg-ft", "FedAvg; each personal model is the global model fine-tuned locally "
                            "for finetune_epochs before evaluation", finetune=True, trains_like="fedavg"),
        Method("local", "each client trains alone on its own data; nothing is sent", federated=False),
        Method("gmp", "gradual magnitude pruning per client, each layer to s_t (Zhu & Gupta 2017)",
               pruning="magnitude"),
        Method("gmp-global", "gradual magnitude pruning with one threshold over all layers",
               pruning="magnitude", scope="global"),
        Method("movement", "movement pruning: top-v of accumulated -grad*w scores per matrix "
                           "(Sanh et al. 2020)", pruning="movement"),
        Method("random", "a random unstructured mask per client at final_sparsity, fixed",
               pruning="random"),
        Method("mi", "layer-wise mutual-information pruning of whole units, top-down from the labels, "
                     "squeezed into a smaller dense model (Fan et al. 2021)", pruning="structured",
               selector="mi"),
        Method("mi-post", "dense FedAvg training; each client prunes the global model with layer-wise MI "
                          "on its own data, squeezes it, refits the layers that read pruned units "
                          "(least squares towards the dense model) and fine-tunes it for finetune_epochs",
               selector="mi", finetune=True, post_training=True, trains_like="fedavg"),
        Method("l1-structured", "whole units with the largest L1 weight norm, squeezed",
               pruning="structured", selector="l1"),
        Method("random-structured", "random whole units, squeezed", pruning="structured", selector="random"),
        Method("small-dense", "a dense model shrunk to the sparse models' kept parameter count, "
                              "trained with FedAvg", small_dense=True),
    )
}
