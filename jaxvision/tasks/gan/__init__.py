"""GANs: the task (:class:`GANTask`), its state and steps (:mod:`.steps`), sample quality
(:mod:`.quality`) and the self-conditioning clusters (:mod:`.clustering`)."""

from jaxvision.tasks.gan.task import GANTask
