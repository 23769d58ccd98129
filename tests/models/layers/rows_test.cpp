// gather_rows / scatter_add_rows against index_select / index_add, values and gradients.
#include "models/layers/rows.h"

#include "support.h"

using recsys::models::gather_rows;
using recsys::models::scatter_add_rows;
using recsys::testing::require_close;

TEST_CASE("gather_rows and scatter_add_rows match index_select and index_add", "[din]") {
  recsys::testing::seed(6);
  for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
    for (std::vector<int64_t> shape : {std::vector<int64_t>{7, 5}, {7}, {7, 2, 3}}) {
      CAPTURE(dtype, shape.size());
      // Unsorted, repeated and missing rows; an empty index too.
      for (auto index : {torch::tensor({3L, 0L, 3L, 6L, 1L, 3L}), torch::zeros({0}, torch::kLong)}) {
        auto src = torch::randn(shape, dtype).requires_grad_(true);
        auto ref = src.detach().clone().requires_grad_(true);
        auto a = gather_rows(src, index);
        auto b = ref.index_select(0, index);
        require_close(a, b, 0, 0);
        auto w = torch::randn(b.sizes(), dtype);
        (a * w).sum().backward();
        (b * w).sum().backward();
        require_close(src.grad(), ref.grad(), 1e-6, 1e-6);

        std::vector<int64_t> pshape = shape;
        pshape[0] = index.size(0);
        auto p = torch::randn(pshape, dtype).requires_grad_(true);
        auto pr = p.detach().clone().requires_grad_(true);
        auto s = scatter_add_rows(p, index, 7);
        std::vector<int64_t> oshape = shape;
        auto t = torch::zeros(oshape, dtype).index_add(0, index, pr);
        require_close(s, t, 1e-6, 1e-6);
        auto v = torch::randn(t.sizes(), dtype);
        (s * v).sum().backward();
        (t * v).sum().backward();
        if (index.size(0) > 0) require_close(p.grad(), pr.grad(), 0, 0);
      }
    }
  }
  auto src = torch::randn({4, 3});
  CHECK_THROWS_WITH(gather_rows(src, torch::tensor({0L, 4L})),
                    Catch::Contains("must lie in [0, 4)"));
  CHECK_THROWS_WITH(scatter_add_rows(src, torch::tensor({0L, 1L}), 5),
                    Catch::Contains("index must be a 1-D int64 tensor of 4 entries"));
  CHECK_THROWS_WITH(gather_rows(src, torch::tensor({0, 1}, torch::kInt32)),
                    Catch::Contains("int64"));
}
