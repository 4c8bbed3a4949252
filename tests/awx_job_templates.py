"""The job templates of playbooks/vars/awx.yml as awx-configure.yml hands them to AWX, and a
job's extra vars as AWX writes them (env/extravars of its private data directory): shared by the
unit tests of AWX as code and the lab's runs of the jobs through ansible-runner."""

from pathlib import Path

import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = yaml.safe_load((ROOT / "playbooks" / "vars" / "controls.yml").read_text())["kvmsec_controls"]


def job_templates():
    """The job templates as awx-configure.yml hands them to awx.awx.job_template: the vars file
    rendered with the catalogue, its !unsafe extra_vars left for AWX's jobs to render."""
    loader = DataLoader()
    data = loader.load_from_file(str(ROOT / "playbooks" / "vars" / "awx.yml"), trusted_as_template=True)
    templar = Templar(loader=loader, variables={**data, "kvmsec_controls": CATALOGUE})
    return templar.template(data["kvmsec_awx_job_templates"])


def default_answers(template):
    """What a launch that accepts every survey default sends (an empty optional answer is not sent)."""
    return dict((question["variable"], question["default"]) for question in template["survey"]
                if question["default"] not in ("", None))


class _Unsafe(str):
    pass


class _AwxDumper(yaml.SafeDumper):
    """Writes a value the way AWX writes a job's extra vars that are not the template's own."""


_AwxDumper.add_representer(_Unsafe, lambda dumper, value: dumper.represent_scalar("!unsafe", str(value)))


def awx_extravars(template, answers, job_id, report_dir="/srv/kvmsec-reports"):
    """AWX (ALLOW_JINJA_IN_EXTRA_VARS "template") writes env/extravars with the job template's own
    extra_vars as they are and tags every other value (survey answers, meta variables) !unsafe;
    awx-configure.yml adds kvmsec_awx_report_dir to the template's extra_vars."""
    own = dict(template["extra_vars"], kvmsec_awx_report_dir=report_dir)
    others = {str(name): _Unsafe(value) for name, value in answers.items()}
    return yaml.safe_dump({str(name): str(value) for name, value in own.items()}) + \
        yaml.dump(others, Dumper=_AwxDumper) + "awx_job_id: %d\n" % job_id
