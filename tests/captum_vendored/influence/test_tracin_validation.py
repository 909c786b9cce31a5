# Vendored from https://github.com/pytorch/captum, tests/influence/_core/test_tracin_validation.py at commit faac08773131888714b15709b28494ebeea7f6eb
# (identical there to the tests of captum 0.9.0, the version installed). Only the imports are
# switched to saliency_fast; see tests/captum_vendored/influence/README.md.
#
# BSD 3-Clause License
#
# Copyright (c) 2019, PyTorch team
# All rights reserved.
#
# Redistribution and use in source and binary forms, with or without modification, are permitted
# provided that the following conditions are met: (1) redistributions of source code must retain
# the above copyright notice, this list of conditions and the following disclaimer; (2)
# redistributions in binary form must reproduce the above copyright notice, this list of
# conditions and the following disclaimer in the documentation and/or other materials provided
# with the distribution; (3) neither the name of the copyright holder nor the names of its
# contributors may be used to endorse or promote products derived from this software without
# specific prior written permission.
#
# THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
# IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
# FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
# CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
# DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
# DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY,
# WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN
# ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.

# pyre-unsafe
import tempfile
from typing import Callable

import torch.nn as nn
from saliency_fast import TracInCP
from saliency_fast import TracInCPFast
from captum.testing.helpers import BaseTest
from tests.captum_vendored.influence.helpers_common import (
    build_test_name_func,
    DataInfluenceConstructor,
    get_random_model_and_data,
)

from parameterized import parameterized


class TestTracinValidator(BaseTest):

    param_list = [
        (
            "none",
            DataInfluenceConstructor(TracInCP, name="TracInCP"),
        ),
        (
            "mean",
            DataInfluenceConstructor(
                TracInCPFast,
                name="TracInCpFast",
            ),
        ),
    ]

    @parameterized.expand(
        param_list,
        name_func=build_test_name_func(),
    )
    def test_tracin_require_inputs_dataset(
        self,
        reduction: str,
        tracin_constructor: Callable,
    ) -> None:
        """
        This test verifies that tracinCP and tracinCPFast
        influence methods required `inputs_dataset`.
        """
        with tempfile.TemporaryDirectory() as tmpdir:
            (
                net,
                train_dataset,
                test_samples,
                test_labels,
            ) = get_random_model_and_data(tmpdir, unpack_inputs=False)

            criterion = nn.MSELoss(reduction=reduction)

            tracin = tracin_constructor(
                net,
                train_dataset,
                tmpdir,
                loss_fn=criterion,
                batch_size=1,
            )
            with self.assertRaisesRegex(AssertionError, "required."):
                tracin.influence(None, k=None)

    def test_tracincp_fast_rand_proj_inputs(self) -> None:
        """
        This test verifies that TracInCPFast should be initialized
        with a valid `final_fc_layer`.
        """
        with tempfile.TemporaryDirectory() as tmpdir:
            (
                net,
                train_dataset,
                test_samples,
                test_labels,
            ) = get_random_model_and_data(tmpdir, unpack_inputs=False)

            with self.assertRaisesRegex(
                ValueError, 'Invalid final_fc_layer str: "invalid_layer" provided!'
            ):
                TracInCPFast(
                    net,
                    "invalid_layer",  # type: ignore
                    train_dataset,
                    tmpdir,
                    loss_fn=nn.MSELoss(),
                    batch_size=1,
                )

    @parameterized.expand(
        param_list,
        name_func=build_test_name_func(),
    )
    def test_tracincp_input_checkpoints(
        self, reduction: str, tracin_constructor: Callable
    ) -> None:
        """
        This test verifies that tracinCP and tracinCPFast
        class should be initialized with valid `checkpoints`.
        """
        with tempfile.TemporaryDirectory() as invalid_tmpdir:
            with tempfile.TemporaryDirectory() as tmpdir:
                (
                    net,
                    train_dataset,
                    test_samples,
                    test_labels,
                ) = get_random_model_and_data(tmpdir, unpack_inputs=False)

            with self.assertRaisesRegex(
                ValueError, "Invalid checkpoints provided for TracIn class: "
            ):
                tracin_constructor(
                    net,
                    train_dataset,
                    invalid_tmpdir,
                    loss_fn=nn.MSELoss(),
                    batch_size=1,
                )
