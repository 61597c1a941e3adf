"""Multi-company: a user sees the bridges of the companies they work in, and what belongs to those bridges."""

from odoo.tests import TransactionCase, new_test_user, tagged


@tagged("post_install", "-at_install")
class TestCompanies(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.company_a = cls.env["res.company"].create({"name": "Shop A"})
        cls.company_b = cls.env["res.company"].create({"name": "Shop B"})
        cls.records = {}
        for company in (cls.company_a, cls.company_b):
            bridge = cls.env["terminal.bridge"].create({"name": f"Bridge of {company.name}", "company_id": company.id})
            terminal = cls.env["terminal.bridge.terminal"].create({"bridge_id": bridge.id, "name": "till-1"})
            command = cls.env["terminal.bridge.command"].create({"uuid": f"cmd-{company.id}", "bridge_id": bridge.id,
                                                                 "op": "terminal.status"})
            payment = cls.env["terminal.bridge.payment"].create({
                "command_id": f"pay-{company.id}", "bridge_id": bridge.id, "terminal_id": terminal.id,
                "amount": 1234, "currency_id": cls.env.ref("base.EUR").id,
            })
            feedback = cls.env["terminal.bridge.feedback"].create({"bridge_id": bridge.id, "pay_ref": f"p{company.id}",
                                                                   "seq": company.id})
            cls.records[company] = {"terminal.bridge": bridge, "terminal.bridge.terminal": terminal,
                                    "terminal.bridge.command": command, "terminal.bridge.payment": payment,
                                    "terminal.bridge.feedback": feedback}
        cls.unclaimed = cls.env["terminal.bridge.feedback"].create({"pay_ref": "nobody's", "seq": 1})
        cls.manager_b = new_test_user(
            cls.env, login="tb-manager-b", company_id=cls.company_b.id, company_ids=[(6, 0, cls.company_b.ids)],
            groups="base.group_user,terminal_bridge.group_terminal_bridge_manager",
        )

    def test_a_manager_sees_only_the_records_of_the_bridges_of_their_companies(self):
        for model, record_b in self.records[self.company_b].items():
            with self.subTest(model=model):
                seen = self.env[model].with_user(self.manager_b).search([])
                self.assertIn(record_b, seen)
                self.assertNotIn(self.records[self.company_a][model], seen)
        feedback = self.env["terminal.bridge.feedback"].with_user(self.manager_b).search([])
        self.assertIn(self.unclaimed, feedback)  # feedback of no known bridge: no company's, shown to all

    def test_a_manager_of_both_companies_sees_both(self):
        self.manager_b.write({"company_ids": [(4, self.company_a.id)]})
        for model in self.records[self.company_a]:
            with self.subTest(model=model):
                seen = self.env[model].with_user(self.manager_b).with_context(
                    allowed_company_ids=[self.company_a.id, self.company_b.id]).search([])
                self.assertIn(self.records[self.company_a][model], seen)
                self.assertIn(self.records[self.company_b][model], seen)
