"""The experiment configs: every one validates, and their arg knobs set what they name."""

import pytest

from configs import base, clip_b16, common, pretrained, shapes, siglip_b16  # noqa: F401
from vitclip import config as config_lib
from vitclip.errors import ConfigError


@pytest.mark.parametrize('module', [clip_b16, siglip_b16])
def test_real_data_configs_validate_and_take_their_knobs(module, tmp_path):
  assert tuple(module.KNOBS) == common.ABLATION_KNOBS
  c = module.get_config('data=my_photos,batch=4096,steps=7,loss=softmax,res=112,remat=none')
  assert (c.data.name, c.batch_size, c.total_steps, c.loss.kind) == ('my_photos', 4096, 7, 'softmax')
  assert (c.model.image.image_size, c.model.remat_policy) == (112, 'none')
  config_lib.validate(config_lib.resolve(c), str(tmp_path), num_devices=8, check_data=False)
  with pytest.raises(ConfigError, match="'batch=x'.*int"):
    module.get_config('batch=x')
  with pytest.raises(ConfigError, match="'bach=1'.*KEY one of"):
    module.get_config('bach=1')


def test_base_is_neutral_and_shapes_follows_its_data():
  c = base.get_config()
  assert c.data.name == '' and c.evals.zeroshot.datasets == () and c.evals.dense.datasets == ()
  assert shapes.get_config().evals.zeroshot.datasets == ('shapes',)
  own = shapes.get_config('loss=sigmoid,data=my_photos')
  assert (own.data.name, own.loss.kind, own.evals.names) == ('my_photos', 'sigmoid', ('retrieval',))
  assert own.evals.zeroshot.datasets == () and own.evals.dense.datasets == ()
  assert shapes.get_config('sigmoid').loss.kind == 'sigmoid'
