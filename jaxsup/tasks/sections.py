"""Every task's config declaration (each task package's light `section.py`), for jaxsup.config.

No JAX and no task code is imported here: configs and the command line read it.
"""
from jaxsup.config_fields import Declaration
from jaxsup.tasks.supervised import section as supervised
from jaxsup.tasks.clip import section as clip
from jaxsup.tasks.simclr import section as simclr
from jaxsup.tasks.distill import section as distill
from jaxsup.tasks.finetune import section as finetune
from jaxsup.tasks.pskd import section as pskd
from jaxsup.tasks.weak_to_strong import section as weak_to_strong
from jaxsup.tasks.pseudo_label import section as pseudo_label
from jaxsup.tasks.sla import section as sla
from jaxsup.tasks.coteaching import section as coteaching
from jaxsup.tasks.look import section as look
from jaxsup.tasks.tgeo_kd import section as tgeo_kd
from jaxsup.tasks.promptkd import section as promptkd

DECLARATIONS: dict[str, Declaration] = {m.DECLARATION.task: m.DECLARATION for m in (
    supervised, clip, simclr, distill, finetune, pskd, weak_to_strong,
    pseudo_label, sla, coteaching, look, tgeo_kd, promptkd,
)}
